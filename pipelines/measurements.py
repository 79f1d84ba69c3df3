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

from pipelines.result import Measurements


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
                (float(np.ptp(points[:, 0])) + 1) * col_mm + (float(np.ptp(points[:, 1])) + 1) * row_mm
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


def measure(
    component: np.ndarray,
    values: np.ndarray,
    pixel_spacing_mm: tuple[float, float] | None,
    slice_spacing_mm: float | None,
    volumetric: bool,
    intensity_unit: str,
    offset: tuple[int, int, int] = (0, 0, 0),
    image_shape: tuple[int, int] | None = None,
) -> tuple[Measurements, tuple[int, ...]]:
    """:func:`measure`, and the (offset) indices of the frames the component is on.

    Counts and extents come from per-axis projections of the mask, not from the coordinates of
    every pixel (three int64 arrays the size of the component: 400 MB for a 16 M voxel one).
    """
    if component.shape != values.shape:
        raise ValueError(f"mask {component.shape} and image {values.shape} differ in shape")
    per_frame = np.count_nonzero(component.reshape(component.shape[0], -1), axis=1)
    pixel_count = int(per_frame.sum())
    if pixel_count == 0:
        raise ValueError("cannot measure an empty component")
    frames = np.flatnonzero(per_frame)
    rows = np.flatnonzero(component.any(axis=(0, 2)))
    cols = np.flatnonzero(component.any(axis=(0, 1)))
    largest = int(np.argmax(per_frame))
    spacing = pixel_spacing_mm or (1.0, 1.0)
    largest_count = int(per_frame[largest])
    rows_total, cols_total = image_shape or (component.shape[1], component.shape[2])
    image_pixels = rows_total * cols_total
    inside = values[component]
    volume = None
    if volumetric and pixel_spacing_mm is not None and slice_spacing_mm:
        volume = float(pixel_count * spacing[0] * spacing[1] * slice_spacing_mm)
    measurements = Measurements(
        area_mm2=float(largest_count * spacing[0] * spacing[1]) if pixel_spacing_mm else None,
        area_pct=100.0 * largest_count / image_pixels,
        volume_mm3=volume,
        mean_intensity=float(inside.mean()),
        max_intensity=float(inside.max()),
        intensity_unit=intensity_unit,
        circularity=_circularity(component[largest], largest_count, spacing),
        pixel_count=pixel_count,
        bbox=(
            int(frames[0]) + offset[0], int(rows[0]) + offset[1], int(cols[0]) + offset[2],
            int(frames[-1]) + offset[0], int(rows[-1]) + offset[1], int(cols[-1]) + offset[2],
        ),
    )
    return measurements, tuple(int(f) + offset[0] for f in frames)
