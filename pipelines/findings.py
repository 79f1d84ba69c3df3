"""Findings: one per connected component of each segment, plus detection boxes no segment covers.

Only ``finding`` labels make findings. An ``anatomy`` label (an organ of a 104-organ model) is a
:class:`Structure`: the whole label measured once (volume, intensity), with no severity — an organ
is not a lesion, and grading a spleen "High" because it is large would be nonsense.

Tracking UIDs are derived from (study, pipeline, version, tracking id), so re-running the same
pipeline version on the same study gives the same UIDs: a PACS sees a retry as the same finding,
not a new one, and SR/SEG written on retry are identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from core.dicom_uids import deterministic_uid
from pipelines.component_numbers import paint_components
from pipelines.contract import DetectionBox, Finding, LabelSpec, Measurements, Structure
from pipelines.measurements import measure_labels
from pipelines.postprocess import Components, label_components
from pipelines.severity import classify_severity
from pipelines.spec import SeverityRules


def tracking_uid(study_uid: str, pipeline: str, version: str, tracking_id: str) -> str:
    """The finding's Tracking UID: the node's one derived-UID scheme over what identifies it."""
    return deterministic_uid("pacsnode-tracking", study_uid, pipeline, version, tracking_id)


@dataclass(frozen=True)
class FindingContext:
    """What every finding of one result shares (keeps the builder's signature short)."""

    study_instance_uid: str
    pipeline_name: str
    pipeline_version: str
    values: np.ndarray  # (F, H, W) original units
    pixel_spacing_mm: tuple[float, float] | None
    slice_spacing_mm: float | None
    volumetric: bool
    intensity_unit: str
    severity_rules: SeverityRules

    def uid(self, tracking_id: str) -> str:
        return tracking_uid(
            self.study_instance_uid, self.pipeline_name, self.pipeline_version, tracking_id
        )


def segment_findings(
    ctx: FindingContext,
    label_map: np.ndarray,
    labels: tuple[LabelSpec, ...],
    components: Mapping[int, Components] | None = None,
) -> list[Finding]:
    """One finding per component, numbered per label name in (frame, row, col) order.

    ``components`` (label value → :class:`Components` of ``label_map == value``, as
    post-processing found them) spares labelling the map again; values it lacks are labelled here.
    """
    return segment_findings_and_map(ctx, label_map, labels, components)[0]


def segment_findings_and_map(
    ctx: FindingContext,
    label_map: np.ndarray,
    labels: tuple[LabelSpec, ...],
    components: Mapping[int, Components] | None = None,
) -> tuple[list[Finding], np.ndarray]:
    """:func:`segment_findings`, plus the finding map: each finding's pixels hold its
    ``component`` number (1, 2, ... in finding order), so a SEG can give it its own segment."""
    findings: list[Finding] = []
    finding_map = np.zeros(label_map.shape, np.uint16)
    for label in labels:
        if label.is_anatomy:  # measured as a structure, never a lesion
            continue
        found = (components or {}).get(label.value)
        if found is None or found.volumetric != ctx.volumetric:
            found = label_components(label_map == label.value, ctx.volumetric)
        if found.count == 0:
            continue
        box = found.region()  # the components' labels are a crop of the map (see Components)
        measured = measure_labels(
            found.labels,
            found.count,
            ctx.values[box],
            ctx.pixel_spacing_mm,
            ctx.slice_spacing_mm,
            ctx.volumetric,
            ctx.intensity_unit,
            offset=(box[0].start, box[1].start, box[2].start),
            image_shape=(label_map.shape[1], label_map.shape[2]),
        )
        ordered = sorted(  # (frame, row, col) of the box corner
            enumerate(measured, start=1), key=lambda item: item[1][0].bbox[:3]
        )
        lookup = np.zeros(found.count + 1, np.uint32)
        for number, (index, _) in enumerate(ordered, start=1):
            lookup[index] = len(findings) + number
        if int(lookup.max()) > np.iinfo(finding_map.dtype).max:
            finding_map = finding_map.astype(np.uint32)
        # only this label's pixels are written: the numbers of earlier labels beside them stay
        paint_components(found.labels, lookup.astype(finding_map.dtype), finding_map[box])
        for number, (_, (m, frame_indices)) in enumerate(ordered, start=1):
            tracking_id = f"{label.name}-{number}"
            findings.append(
                Finding(
                    tracking_id=tracking_id,
                    tracking_uid=ctx.uid(tracking_id),
                    label=label,
                    measurements=m,
                    severity=classify_severity(m, ctx.severity_rules),
                    segment_number=label.value,
                    frame_indices=frame_indices,
                    component=len(findings) + 1,
                )
            )
    return findings, finding_map


def measure_structures(
    ctx: FindingContext, label_map: np.ndarray, labels: tuple[LabelSpec, ...]
) -> list[Structure]:
    """One :class:`Structure` per anatomy label present in ``label_map`` (in label order).

    Each label is measured as one region over the box of its pixels, so a 104-organ map costs
    104 small passes, not 104 passes over the whole volume.
    """
    structures: list[Structure] = []
    wanted = [label for label in labels if label.is_anatomy]
    if not wanted:
        return structures
    boxes = ndimage.find_objects(label_map, max_label=max(label.value for label in wanted))
    rows, cols = label_map.shape[1:]
    for label in wanted:
        box = boxes[label.value - 1]
        if box is None:
            continue
        mask = label_map[box] == label.value
        measured = measure_labels(
            mask.view(np.uint8),
            1,
            ctx.values[box],
            ctx.pixel_spacing_mm,
            ctx.slice_spacing_mm,
            ctx.volumetric,
            ctx.intensity_unit,
            offset=(box[0].start, box[1].start, box[2].start),
            image_shape=(rows, cols),
        )
        del mask
        measurements, frame_indices = measured[0]
        structures.append(
            Structure(
                tracking_id=label.name,
                tracking_uid=ctx.uid(f"structure-{label.name}"),
                label=label,
                measurements=measurements,
                frame_indices=frame_indices,
            )
        )
    return structures


def _box_pixels(box: DetectionBox, shape: tuple[int, int]) -> tuple[slice, slice]:
    rows, cols = shape
    r0, r1 = int(np.floor(box.y0)), int(np.ceil(box.y1))
    c0, c1 = int(np.floor(box.x0)), int(np.ceil(box.x1))
    return slice(max(0, r0), min(rows, max(r1, r0 + 1))), slice(
        max(0, c0), min(cols, max(c1, c0 + 1))
    )


def box_measurements(ctx: FindingContext, box: DetectionBox) -> Measurements:
    """A box-only finding: its rectangle's area and intensities (no shape: circularity None)."""
    rows, cols = _box_pixels(box, ctx.values.shape[1:])
    region = ctx.values[box.frame_index, rows, cols]
    count = int(region.size)
    spacing = ctx.pixel_spacing_mm
    image_pixels = ctx.values.shape[1] * ctx.values.shape[2]
    return Measurements(
        area_mm2=float(count * spacing[0] * spacing[1]) if spacing else None,
        area_pct=100.0 * count / image_pixels,
        volume_mm3=None,
        mean_intensity=float(region.mean()),
        max_intensity=float(region.max()),
        intensity_unit=ctx.intensity_unit,
        circularity=None,
        pixel_count=count,
        bbox=(
            box.frame_index,
            rows.start,
            cols.start,
            box.frame_index,
            rows.stop - 1,
            cols.stop - 1,
        ),
    )


def attach_boxes(
    ctx: FindingContext,
    findings: list[Finding],
    label_map: np.ndarray | None,
    boxes: tuple[DetectionBox, ...],
) -> list[Finding]:
    """Give each segment finding the best box overlapping it; boxes left over become findings."""
    result = list(findings)
    claimed: set[int] = set()
    if label_map is not None:
        for box_index, box in sorted(enumerate(boxes), key=lambda b: -b[1].score):
            rows, cols = _box_pixels(box, label_map.shape[1:])
            for i, finding in enumerate(result):
                if finding.box is not None or box.frame_index not in finding.frame_indices:
                    continue
                f0, r0, c0, f1, r1, c1 = finding.measurements.bbox
                overlaps = (
                    r0 < rows.stop and rows.start <= r1 and c0 < cols.stop and cols.start <= c1
                )
                if (
                    overlaps
                    and (label_map[box.frame_index, rows, cols] == finding.segment_number).any()
                ):
                    result[i] = replace(finding, box=box)
                    claimed.add(box_index)
                    break
    counters: dict[str, int] = {}
    for box_index, box in enumerate(boxes):
        if box_index in claimed:
            continue
        name = f"{box.label.name}-box"
        counters[name] = counters.get(name, 0) + 1
        tracking_id = f"{name}-{counters[name]}"
        m = box_measurements(ctx, box)
        result.append(
            Finding(
                tracking_id=tracking_id,
                tracking_uid=ctx.uid(tracking_id),
                label=box.label,
                measurements=m,
                severity=classify_severity(m, ctx.severity_rules),
                segment_number=None,
                frame_indices=(box.frame_index,),
                box=box,
            )
        )
    return result
