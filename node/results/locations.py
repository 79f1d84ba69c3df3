"""Where a finding is, in terms a radiologist and a viewer use.

Locations: the scanner's InstanceNumber/SeriesNumber and the slice position (mm) of each source
frame, filled from the source headers where the pipeline did not record them (results made before
it did). Regions: a finding's own pixels (its component of the finding map, else its label inside
its box) and the outline of its key-slice cross-section as a closed polyline a viewer draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import cv2
import numpy as np
from pydicom.dataset import Dataset

from node.results.geometry import frame_plane
from pipelines.contract import Finding, PipelineResult, SourceFrame


def _number(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _located(frame: SourceFrame, source: Dataset) -> SourceFrame:
    if frame.instance_number is not None:
        return frame
    plane = frame_plane(source, frame.frame_number)
    position = None
    if plane is not None:
        position = round(float(np.asarray(plane.position, dtype=float) @ plane.normal), 2)
    return replace(
        frame,
        instance_number=_number(source.get("InstanceNumber")),
        series_number=_number(source.get("SeriesNumber")),
        position_mm=position,
    )


def with_locations(result: PipelineResult, sources: Sequence[Dataset]) -> PipelineResult:
    """``result`` with every source frame's InstanceNumber, SeriesNumber and position known."""
    if all(f.instance_number is not None for f in result.source_frames):
        return result
    frames = tuple(
        _located(frame, sources[0] if len(sources) == 1 else sources[index])
        for index, frame in enumerate(result.source_frames)
    )
    return replace(result, source_frames=frames)


def finding_slice_mask(result: PipelineResult, finding: Finding, frame_index: int) -> np.ndarray:
    """The finding's own pixels on one frame, (rows, cols) bool."""
    seg = result.segmentation
    if seg is None or finding.segment_number is None:
        raise ValueError(f"finding {finding.tracking_id} has no segmentation pixels")
    if seg.finding_map is not None and finding.component is not None:
        return seg.finding_map[frame_index] == finding.component  # type: ignore[no-any-return]
    _f0, r0, c0, _f1, r1, c1 = finding.measurements.bbox
    mask = np.zeros(seg.label_map.shape[1:], dtype=bool)
    window = (slice(r0, r1 + 1), slice(c0, c1 + 1))
    mask[window] = seg.label_map[frame_index][window] == finding.segment_number
    return mask


def finding_mask(result: PipelineResult, finding: Finding) -> np.ndarray:
    """The finding's own pixels, (frames, rows, cols) bool: its component of the finding map;
    for results without one, its label inside its bounding box."""
    seg = result.segmentation
    if seg is None or finding.segment_number is None:
        raise ValueError(f"finding {finding.tracking_id} has no segmentation pixels")
    if seg.finding_map is not None and finding.component is not None:
        return seg.finding_map == finding.component  # type: ignore[no-any-return]
    f0, r0, c0, f1, r1, c1 = finding.measurements.bbox
    mask = np.zeros(seg.label_map.shape, dtype=bool)
    window = (slice(f0, f1 + 1), slice(r0, r1 + 1), slice(c0, c1 + 1))
    mask[window] = seg.label_map[window] == finding.segment_number
    return mask


def outline(mask: np.ndarray) -> np.ndarray:
    """The largest outer contour of a 2D mask as a closed polyline of SCOORD (column, row) points.

    OpenCV traces pixel centres (integer indices); SCOORD puts the top-left pixel's outer corner
    at 0.0, so its centre at 0.5: 0.5 is added. A one-pixel or one-line component gets its
    pixels' box (pixel edges) instead, so the polyline always encloses an area a viewer can draw.
    """
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    if not contours:
        raise ValueError("empty mask has no outline")
    points = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(float) + 0.5
    if len(points) < 3 or cv2.contourArea(points.astype(np.float32)) == 0:
        rows, cols = np.nonzero(mask)  # pixel edges: the box around the pixels
        x0, x1, y0, y1 = cols.min(), cols.max() + 1.0, rows.min(), rows.max() + 1.0
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)
    return np.vstack([points, points[:1]])
