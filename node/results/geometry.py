"""Pixel → patient coordinates for one source frame, for SCOORD3D regions.

Single-frame images carry the plane in ImagePositionPatient/ImageOrientationPatient/PixelSpacing;
enhanced multi-frame images in their per-frame and shared functional groups. Projection images
(CR/DX) have no patient plane: ``frame_plane`` returns ``None`` and callers fall back to SCOORD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset


@dataclass(frozen=True)
class FramePlane:
    frame_of_reference_uid: str
    position: np.ndarray  # (3,) centre of the top-left pixel, mm
    row_direction: np.ndarray  # (3,) direction of increasing column index
    column_direction: np.ndarray  # (3,) direction of increasing row index
    row_spacing: float  # mm between rows
    column_spacing: float  # mm between columns
    thickness: float = 1.0  # mm along the normal (SliceThickness; 1 mm when the source omits it)

    @property
    def normal(self) -> np.ndarray:
        """Unit vector perpendicular to the plane (row x column direction)."""
        cross = np.cross(self.row_direction, self.column_direction)
        return cross / (np.linalg.norm(cross) or 1.0)

    def to_patient(self, columns: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(n, 3) patient coordinates of pixel positions (column, row; pixel centres at .0)."""
        return (
            self.position[None, :]
            + columns[:, None] * self.column_spacing * self.row_direction[None, :]
            + rows[:, None] * self.row_spacing * self.column_direction[None, :]
        )


def _functional_group(dataset: Dataset, frame_number: int, keyword: str) -> Dataset | None:
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) >= frame_number and keyword in per_frame[frame_number - 1]:
        return per_frame[frame_number - 1][keyword][0]
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared and keyword in shared[0]:
        return shared[0][keyword][0]
    return None


def frame_plane(dataset: Dataset, frame_number: int | None = None) -> FramePlane | None:
    """The plane of one frame (1-based for multi-frame), or ``None`` without patient geometry."""
    frame_uid = dataset.get("FrameOfReferenceUID")
    if not frame_uid:
        return None
    if frame_number is not None and "PerFrameFunctionalGroupsSequence" in dataset:
        position_item = _functional_group(dataset, frame_number, "PlanePositionSequence")
        orientation_item = _functional_group(dataset, frame_number, "PlaneOrientationSequence")
        measures_item = _functional_group(dataset, frame_number, "PixelMeasuresSequence")
        if position_item is None or orientation_item is None or measures_item is None:
            return None
        position = position_item.get("ImagePositionPatient")
        orientation = orientation_item.get("ImageOrientationPatient")
        spacing = measures_item.get("PixelSpacing")
        thickness = measures_item.get("SliceThickness")
    else:
        position = dataset.get("ImagePositionPatient")
        orientation = dataset.get("ImageOrientationPatient")
        spacing = dataset.get("PixelSpacing")
        thickness = dataset.get("SliceThickness") or dataset.get("SpacingBetweenSlices")
    if not position or not orientation or not spacing:
        return None
    orientation_values = np.array([float(v) for v in orientation])
    return FramePlane(
        frame_of_reference_uid=str(frame_uid),
        position=np.array([float(v) for v in position]),
        row_direction=orientation_values[:3],
        column_direction=orientation_values[3:],
        row_spacing=float(spacing[0]),
        column_spacing=float(spacing[1]),
        thickness=_positive(thickness),
    )


def _positive(value: object, default: float = 1.0) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default
