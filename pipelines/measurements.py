"""Measurements of one finding in source geometry and original units (HU for CT).

2D: area is the component's pixel count times the pixel area; area % is of the whole image.
3D: ``volume_mm3`` is voxel count times voxel volume; ``area_mm2``/``area_pct``/circularity are
of the largest cross-section (the slice a radiologist would measure on). Circularity 4πA/P² uses
the outline through pixel centres pushed out half a pixel (P + π·spacing for a convex outline), so
a digitised disc scores ≈ 1 and a square ≈ π/4.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import cv2
import numpy as np

from pipelines.compiled import compile_kernel
from pipelines.contract import Measurements
from pipelines.label_statistics import label_statistics
from pipelines.postprocess import foreground_box


def perimeter_mm(mask2d: np.ndarray, spacing: tuple[float, float]) -> float:
    """Outline length of a 2D mask (all outer contours), in mm (or pixels for spacing 1)."""
    if mask2d.dtype == np.bool_:  # same bytes: no copy to make
        mask = np.ascontiguousarray(mask2d).view(np.uint8)
    else:
        mask = mask2d.astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    row_mm, col_mm = spacing
    total = 0.0
    for contour in contours:
        if len(contour) < 3:  # a pixel or a line: the pixel edges are the outline
            points = contour.reshape(-1, 2)
            total += 2 * (
                (float(np.ptp(points[:, 0])) + 1) * col_mm
                + (float(np.ptp(points[:, 1])) + 1) * row_mm
            )
            continue
        simplified = cv2.approxPolyDP(contour, 1.0, True).reshape(-1, 2)
        total += float(_edge_lengths(simplified, col_mm, row_mm).sum())
        total += math.pi * (row_mm + col_mm) / 2.0
    return total


def _edge_lengths(points: np.ndarray, col_mm: float, row_mm: float) -> np.ndarray:
    """The lengths of a closed polygon's edges, (x, y) pixel ``points`` scaled to mm.

    A noisy mask has a hundred outlines of a few dozen corners each; numpy's seven small
    operations per outline cost ~10 µs, the compiled loop ~1 µs. numpy still adds the lengths up
    (its pairwise sum), so the perimeter is the numpy way's to the last bit (tested)."""
    return _lengths_kernel()(points, col_mm, row_mm)


def _lengths(points: np.ndarray, col_mm: float, row_mm: float) -> np.ndarray:
    count = points.shape[0]
    out = np.empty(count, np.float64)
    for i in range(count):
        j = i + 1 if i + 1 < count else 0
        dx = points[j, 0] * col_mm - points[i, 0] * col_mm
        dy = points[j, 1] * row_mm - points[i, 1] * row_mm
        out[i] = np.sqrt(dx * dx + dy * dy)
    return out


@functools.cache
def _lengths_kernel() -> Callable[..., np.ndarray]:
    """:func:`_lengths` compiled (once per process; see :mod:`pipelines.compiled`)."""
    return compile_kernel(_lengths)


@functools.cache
def warm_up() -> None:
    """Load the outline kernel for cv2's point type now (once per process)."""
    _edge_lengths(np.zeros((3, 2), np.int32), 1.0, 1.0)


def circularity(mask2d: np.ndarray, spacing: tuple[float, float]) -> float | None:
    """4πA/P², clipped to 1; None for an empty mask."""
    return _circularity(mask2d, int(np.count_nonzero(mask2d)), spacing)


def _circularity(mask2d: np.ndarray, count: int, spacing: tuple[float, float]) -> float | None:
    if count == 0:
        return None
    area = count * spacing[0] * spacing[1]
    perimeter = perimeter_mm(mask2d, spacing)
    if perimeter <= 0:
        return None
    return float(min(1.0, 4.0 * math.pi * area / perimeter**2))


def measure_labels(
    labels: np.ndarray,
    count: int,
    values: np.ndarray,
    pixel_spacing_mm: tuple[float, float] | None,
    slice_spacing_mm: float | None,
    volumetric: bool,
    intensity_unit: str,
    offset: tuple[int, int, int] = (0, 0, 0),
    image_shape: tuple[int, int] | None = None,
) -> list[tuple[Measurements, tuple[int, ...]]]:
    """Components 1..``count`` of a (F, H, W) label array: measurements and frame indices each.

    Counts, per-frame counts, sums, maxima and boxes of all components come from one pass over
    the box around them (:func:`label_statistics`), not from a pass per component: a noisy mask
    has a hundred components.
    """
    if labels.shape != values.shape:
        raise ValueError(f"labels {labels.shape} and image {values.shape} differ in shape")
    if count == 0:
        return []
    # only the box around all components is visited: a trained model's lesions fill a few
    # thousand voxels of a 26 M voxel CT
    around = foreground_box(labels)
    if around is None:
        raise ValueError("cannot measure an empty component (label 1)")
    stats = label_statistics(labels[around], values[around], count)
    missing = np.flatnonzero(stats.upper[1:, 0] < 0)
    if missing.size:
        raise ValueError(f"cannot measure an empty component (label {int(missing[0]) + 1})")
    starts = np.array([axis.start for axis in around], np.int64)
    # whole columns at once, then Python numbers: a noisy mask has a hundred components, and
    # numpy's per-call cost on each one's row was a third of measuring them
    lower, upper = stats.lower + starts, stats.upper + starts  # in ``labels``
    boxes = (np.hstack((lower, upper)) + np.tile(np.array(offset, np.int64), 2)).tolist()
    crop_lower, crop_upper = lower.tolist(), upper.tolist()
    pixel_counts = stats.per_frame.sum(axis=1).tolist()
    largest_frames = stats.per_frame.argmax(axis=1)
    largest_counts = np.take_along_axis(stats.per_frame, largest_frames[:, None], 1)[:, 0].tolist()
    largest_frames = largest_frames.tolist()
    sums = stats.sums.tolist()
    maxima = stats.maxima.tolist()
    component_rows, frame_columns = np.nonzero(stats.per_frame)
    frame_offset = around[0].start + offset[0]
    frame_lists = np.split(
        frame_columns + frame_offset,
        np.cumsum(np.bincount(component_rows, minlength=count + 1))[:-1],
    )
    spacing = pixel_spacing_mm or (1.0, 1.0)
    rows_total, cols_total = image_shape or (labels.shape[1], labels.shape[2])
    image_pixels = rows_total * cols_total
    with_volume = volumetric and pixel_spacing_mm is not None and bool(slice_spacing_mm)
    results = []
    for index in range(1, count + 1):
        pixel_count = pixel_counts[index]
        largest_count = largest_counts[index]
        first, last = crop_lower[index], crop_upper[index]
        # the largest cross-section, padded by a pixel so its outline sees the background
        rows = slice(max(first[1] - 1, 0), last[1] + 2)
        cols = slice(max(first[2] - 1, 0), last[2] + 2)
        cross_section = labels[largest_frames[index] + around[0].start, rows, cols] == index
        measurements = Measurements(
            area_mm2=float(largest_count * spacing[0] * spacing[1]) if pixel_spacing_mm else None,
            area_pct=100.0 * largest_count / image_pixels,
            volume_mm3=(
                float(pixel_count * spacing[0] * spacing[1] * slice_spacing_mm)  # type: ignore[operator]
                if with_volume
                else None
            ),
            mean_intensity=sums[index] / pixel_count,
            max_intensity=maxima[index],
            intensity_unit=intensity_unit,
            circularity=_circularity(cross_section, largest_count, spacing),
            pixel_count=pixel_count,
            bbox=tuple(boxes[index]),  # in the caller's frame
        )
        results.append((measurements, tuple(frame_lists[index].tolist())))
    return results
