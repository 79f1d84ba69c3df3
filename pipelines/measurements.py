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
from scipy import ndimage

from pipelines.contract import Measurements
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

    Counts, per-frame counts, sums and maxima of all components come from one pass per frame over
    that frame's labelled pixels (``bincount``), not from a pass per component: a noisy mask has
    a hundred components. Memory stays at one frame's worth, whatever the volume.
    """
    if labels.shape != values.shape:
        raise ValueError(f"labels {labels.shape} and image {values.shape} differ in shape")
    if count == 0:
        return []
    # find the components' boxes inside the box around all of them: a trained model's lesions
    # fill a few thousand voxels of a 26 M voxel CT, and find_objects visits what it is given
    around = foreground_box(labels)
    if around is None:
        raise ValueError("cannot measure an empty component (label 1)")
    # a lone component's box is the box around all: no find_objects pass (an organ, or a
    # random-weight model's one huge component, fills much of the volume)
    boxes = [around] if count == 1 else _component_boxes(labels, count, around)
    per_frame, sums, maxima = _frame_statistics(labels, count, values, around)
    spacing = pixel_spacing_mm or (1.0, 1.0)
    rows_total, cols_total = image_shape or (labels.shape[1], labels.shape[2])
    image_pixels = rows_total * cols_total
    with_volume = volumetric and pixel_spacing_mm is not None and bool(slice_spacing_mm)
    results = []
    for index, box in enumerate(boxes, start=1):
        counts = per_frame[index]
        pixel_count = int(counts.sum())
        largest = int(np.argmax(counts))
        largest_count = int(counts[largest])
        # the largest cross-section, padded by a pixel so its outline sees the background
        rows = slice(max(box[1].start - 1, 0), box[1].stop + 1)
        cols = slice(max(box[2].start - 1, 0), box[2].stop + 1)
        cross_section = labels[largest, rows, cols] == index
        measurements = Measurements(
            area_mm2=float(largest_count * spacing[0] * spacing[1]) if pixel_spacing_mm else None,
            area_pct=100.0 * largest_count / image_pixels,
            volume_mm3=(
                float(pixel_count * spacing[0] * spacing[1] * slice_spacing_mm)  # type: ignore[operator]
                if with_volume
                else None
            ),
            mean_intensity=float(sums[index] / pixel_count),
            max_intensity=float(maxima[index]),
            intensity_unit=intensity_unit,
            circularity=_circularity(cross_section, largest_count, spacing),
            pixel_count=pixel_count,
            bbox=(
                box[0].start + offset[0],
                box[1].start + offset[1],
                box[2].start + offset[2],
                box[0].stop - 1 + offset[0],
                box[1].stop - 1 + offset[1],
                box[2].stop - 1 + offset[2],
            ),
        )
        frames = tuple(int(f) + offset[0] for f in np.flatnonzero(counts))
        results.append((measurements, frames))
    return results


def _component_boxes(
    labels: np.ndarray, count: int, around: tuple[slice, slice, slice]
) -> list[tuple[slice, ...]]:
    """Each component's box (``find_objects`` inside ``around``, shifted back); an error for a
    component number with no pixels."""
    found = ndimage.find_objects(labels[around], max_label=count)
    missing = next((i for i, box in enumerate(found, start=1) if box is None), None)
    if missing is not None:
        raise ValueError(f"cannot measure an empty component (label {missing})")
    starts = [axis.start for axis in around]
    return [
        tuple(
            slice(axis.start + start, axis.stop + start)
            for axis, start in zip(box, starts, strict=True)
        )
        for box in found
        if box is not None
    ]


def _frame_statistics(
    labels: np.ndarray, count: int, values: np.ndarray, around: tuple[slice, slice, slice]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per component: pixel count per frame ((count + 1, F)), value sum and maximum (row 0 is
    background or unused).

    A frame at least half labelled is taken whole (its background counted as label 0, ignored):
    gathering its labelled pixels first would cost more than it saves. Sums are ``bincount``'s
    sequential float64 sums per frame, added frame by frame, whichever way a frame is read, so
    the mean does not depend on it. One component needs no ``np.maximum.at`` (slow) and no
    count pass: its pixels are the frame's set pixels.
    """
    frames_box, rows_box, cols_box = around  # visit only what some component touches
    per_frame = np.zeros((count + 1, labels.shape[0]), np.int64)
    sums = np.zeros(count + 1, np.float64)
    maxima = np.full(count + 1, -np.inf)
    for f in range(frames_box.start, frames_box.stop):
        flat = labels[f, rows_box, cols_box].ravel()
        labelled = int(np.count_nonzero(flat))  # far cheaper than locating them
        if labelled == 0:
            continue
        frame_values = values[f, rows_box, cols_box].ravel()
        sparse = 2 * labelled < flat.size
        if sparse:
            where = np.flatnonzero(flat)
            ids = flat[where].astype(np.intp)
            inside = frame_values[where].astype(np.float64)
        else:  # mostly labelled: all of it, background under label 0
            ids = flat.astype(np.intp)
            inside = frame_values.astype(np.float64)
        sums += np.bincount(ids, weights=inside, minlength=count + 1)
        if count == 1:
            per_frame[1, f] = labelled
            full = sparse or labelled == flat.size
            top = inside.max() if full else inside.max(initial=-np.inf, where=flat != 0)
            maxima[1] = np.maximum(maxima[1], top)  # NaN propagates, as np.maximum.at does
        else:
            per_frame[:, f] = np.bincount(ids, minlength=count + 1)
            np.maximum.at(maxima, ids, inside)
    return per_frame, sums, maxima
