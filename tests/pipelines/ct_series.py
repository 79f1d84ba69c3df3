"""CT series written from a function of patient position, in any plane, direction and file order.

The same anatomy (HU as a function of LPS millimetres) sampled on the same lattice of voxel centres
and stored as axial head-first, axial feet-first, coronal or sagittal slices, so orientation tests
can compare results point by point in patient space.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from pipelines.contract import SourceSeries


def anatomy(points: np.ndarray) -> np.ndarray:
    """HU at LPS points (..., 3): an air background, a body ellipse, an organ-like blob."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    hu = np.full(x.shape, -1000.0)
    body = (x / 55) ** 2 + (y / 45) ** 2 < 1
    hu[body] = 0.3 * z[body]
    organ = ((x - 15) / 25) ** 2 + ((y + 5) / 18) ** 2 + ((z - 5) / 20) ** 2 < 1
    hu[organ] = 110 + 20 * np.sin(x[organ] / 7)
    return hu


# lattice: x, y in [-60, 57.5] step 2.5 (48 points), z in [-30, 27] step 3 (20 points)
LATTICE_START = np.array([-60.0, -60.0, -30.0])
LATTICE_STEP = np.array([2.5, 2.5, 3.0])
LATTICE_COUNT = np.array([48, 48, 20])

# plane -> (row direction, column direction, slice direction) as lattice axes with signs
PLANES: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "axial-head-first": ((0, 1), (1, 1), (2, 1)),
    "axial-feet-first": ((0, 1), (1, 1), (2, -1)),
    "coronal": ((0, 1), (2, -1), (1, 1)),
    "sagittal": ((1, 1), (2, -1), (0, 1)),
}


def write_ct_series(out: Path, plane: str, *, reverse_files: bool = False) -> SourceSeries:
    """The lattice stored as ``plane`` slices under ``out``; file names in reverse order on request."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in LATTICE_COUNT), indexing="ij"), axis=-1)
    values = anatomy(LATTICE_START + index * LATTICE_STEP)
    return write_lattice_series(
        out, plane, values, LATTICE_START, LATTICE_STEP, reverse_files=reverse_files
    )


def write_lattice_series(
    out: Path,
    plane: str,
    values: np.ndarray,
    start: np.ndarray,
    step: np.ndarray,
    *,
    modality: str = "CT",
    reverse_files: bool = False,
) -> SourceSeries:
    """``values[x, y, z]`` (the voxel at LPS ``start + index * step``) stored as ``plane`` slices.

    Every plane stores the very same voxels, only in another order, so results can be compared
    voxel for voxel in patient space (:func:`labels_by_position`).
    """
    (row_axis, row_sign), (col_axis, col_sign), (slice_axis, slice_sign) = PLANES[plane]
    count = np.asarray(values.shape)
    out.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    row_dir = np.zeros(3)
    row_dir[row_axis] = row_sign
    col_dir = np.zeros(3)
    col_dir[col_axis] = col_sign
    # storage order: values as (slice, row, column), each axis run in its stored direction
    stored = values.transpose(slice_axis, col_axis, row_axis)
    flips = [a for a, sign in enumerate((slice_sign, col_sign, row_sign)) if sign < 0]
    stored = np.flip(stored, axis=flips) if flips else stored
    first = np.asarray(start, dtype=float).copy()
    for axis, sign in ((row_axis, row_sign), (col_axis, col_sign), (slice_axis, slice_sign)):
        if sign < 0:
            first[axis] = start[axis] + (count[axis] - 1) * step[axis]
    slice_step = np.zeros(3)
    slice_step[slice_axis] = slice_sign * step[slice_axis]
    slices, rows, cols = stored.shape
    files: list[Path] = []
    for k in range(slices):
        position = first + k * slice_step
        pixels = np.round(stored[k]).astype(np.int16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.PatientName, ds.PatientID = modality, "Orientation^Test", "ORIENT1"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:g}" for v in position]
        ds.ImageOrientationPatient = [f"{v:g}" for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [f"{step[col_axis]:g}", f"{step[row_axis]:g}"]
        ds.SliceThickness = f"{step[slice_axis]:g}"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if modality == "CT":
            ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        path = out / f"{(slices - k) if reverse_files else k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return SourceSeries(series_uid, modality, sop_class, tuple(sorted(files)))


def labels_by_position(
    label_map: np.ndarray,
    affine_lps: np.ndarray,
    start: np.ndarray = LATTICE_START,
    step: np.ndarray = LATTICE_STEP,
) -> dict[tuple[int, ...], int]:
    """{lattice index of the voxel centre: label} for a (frames, rows, cols) label map."""
    frames, rows, cols = label_map.shape
    k, j, i = np.meshgrid(np.arange(frames), np.arange(rows), np.arange(cols), indexing="ij")
    index = np.stack([i, j, k, np.ones_like(i)], axis=-1).reshape(-1, 4).astype(float)
    world = (index @ affine_lps.T)[:, :3]
    lattice = np.rint((world - start) / step).astype(int)
    return dict(zip(map(tuple, lattice), label_map.reshape(-1).tolist(), strict=True))
