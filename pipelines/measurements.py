"""Measurements of one finding in source geometry and original units (HU for CT).

2D: area is the component's pixel count times the pixel area; area % is of the whole image.
3D: ``volume_mm3`` is voxel count times voxel volume; ``area_mm2``/``area_pct``/circularity are
of the largest cross-section (the slice a radiologist would measure on). Circularity 4πA/P² uses
the outline through pixel centres pushed out half a pixel (P + π·spacing for a convex outline), so
a digitised disc scores ≈ 1 and a square ≈ π/4.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from pipelines.contract import Measurements
from pipelines.label_statistics import label_statistics
from pipelines.postprocess import foreground_box


def perimeter_mm(mask2d: np.ndarray, spacing: tuple[float, float]) -> float:
    """Outline length of a 2D mask (all outer contours), in mm (or pixels for spacing 1)."""
    contours, _ = cv2.findContours(
        mask2d.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    row_mm, col_mm = spacing
    scale = np.array([col_mm, row_mm])
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
        scaled = simplified * scale  # float64
        steps = np.concatenate((scaled[1:], scaled[:1])) - scaled  # the closed outline's edges
        total += float(np.sqrt(np.add.reduce(steps * steps, axis=1)).sum())
        total += math.pi * (row_mm + col_mm) / 2.0
    return total


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
    lower = stats.lower + starts  # in ``labels``
    upper = stats.upper + starts
    spacing = pixel_spacing_mm or (1.0, 1.0)
    rows_total, cols_total = image_shape or (labels.shape[1], labels.shape[2])
    image_pixels = rows_total * cols_total
    with_volume = volumetric and pixel_spacing_mm is not None and bool(slice_spacing_mm)
    results = []
    for index in range(1, count + 1):
        counts = stats.per_frame[index]
        pixel_count = int(counts.sum())
        largest = int(np.argmax(counts))
        largest_count = int(counts[largest])
        first, last = lower[index], upper[index]
        # the largest cross-section, padded by a pixel so its outline sees the background
        rows = slice(max(int(first[1]) - 1, 0), int(last[1]) + 2)
        cols = slice(max(int(first[2]) - 1, 0), int(last[2]) + 2)
        cross_section = labels[largest + around[0].start, rows, cols] == index
        measurements = Measurements(
            area_mm2=float(largest_count * spacing[0] * spacing[1]) if pixel_spacing_mm else None,
            area_pct=100.0 * largest_count / image_pixels,
            volume_mm3=(
                float(pixel_count * spacing[0] * spacing[1] * slice_spacing_mm)  # type: ignore[operator]
                if with_volume
                else None
            ),
            mean_intensity=float(stats.sums[index] / pixel_count),
            max_intensity=float(stats.maxima[index]),
            intensity_unit=intensity_unit,
            circularity=_circularity(cross_section, largest_count, spacing),
            pixel_count=pixel_count,
            bbox=(
                int(first[0]) + offset[0],
                int(first[1]) + offset[1],
                int(first[2]) + offset[2],
                int(last[0]) + offset[0],
                int(last[1]) + offset[1],
                int(last[2]) + offset[2],
            ),
        )
        frames = tuple(int(f) + around[0].start + offset[0] for f in np.flatnonzero(counts))
        results.append((measurements, frames))
    return results
