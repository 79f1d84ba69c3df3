from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from pipelines.contract import Measurements
from pipelines.measurements import circularity, measure_labels


def measure(
    component: np.ndarray, values: np.ndarray, *args: Any, **kwargs: Any
) -> tuple[Measurements, tuple[int, ...]]:
    """One component (a bool mask) measured as label 1 of ``measure_labels`` (same arguments)."""
    ((m, frames),) = measure_labels(component.astype(np.uint8), 1, values, *args, **kwargs)
    return m, frames


def _disc(n: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    return (yy - n / 2) ** 2 + (xx - n / 2) ** 2 <= r * r


@pytest.mark.parametrize("radius", [10, 20, 40])
def test_disc_area_and_circularity(radius: int) -> None:
    spacing = (0.5, 0.5)
    mask = _disc(4 * radius, radius)[None]
    values = np.where(mask, 60.0, -1000.0).astype(np.float32)
    m, _ = measure(mask, values, spacing, None, volumetric=False, intensity_unit="HU")
    true_area = math.pi * (radius * 0.5) ** 2
    assert m.area_mm2 == pytest.approx(true_area, rel=0.03)
    assert m.circularity == pytest.approx(1.0, abs=0.06)
    assert m.mean_intensity == pytest.approx(60.0) and m.max_intensity == 60.0
    assert m.intensity_unit == "HU"
    assert m.area_pct == pytest.approx(100 * mask.sum() / mask.size)
    assert m.volume_mm3 is None


def test_square_and_elongated_shapes_are_less_circular() -> None:
    square = np.zeros((60, 60), bool)
    square[10:50, 10:50] = True
    assert circularity(square, (1.0, 1.0)) == pytest.approx(math.pi / 4, abs=0.04)
    bar = np.zeros((60, 60), bool)
    bar[28:32, 5:55] = True
    c = circularity(bar, (1.0, 1.0))
    assert c is not None and c < 0.3


def test_anisotropic_spacing_keeps_a_physical_disc_round() -> None:
    yy, xx = np.mgrid[:80, :160]
    ellipse_in_pixels = ((yy - 40) / 20.0) ** 2 + ((xx - 80) / 40.0) ** 2 <= 1.0  # 20 x 40 px
    assert circularity(ellipse_in_pixels, (1.0, 0.5)) == pytest.approx(1.0, abs=0.06)


def test_volume_bbox_and_hu_mean_on_a_ct_like_sphere() -> None:
    zz, yy, xx = np.mgrid[:20, :40, :40]
    sphere = (zz - 10) ** 2 * 4 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 64  # r=8 mm, 2 mm slices
    rng = np.random.default_rng(0)
    hu = np.where(sphere, 45.0, -50.0) + rng.normal(0, 5, sphere.shape)
    m, _ = measure(
        sphere, hu.astype(np.float32), (1.0, 1.0), 2.0, volumetric=True, intensity_unit="HU"
    )
    assert m.volume_mm3 == pytest.approx(4 / 3 * math.pi * 8**3, rel=0.05)
    assert m.mean_intensity == pytest.approx(45.0, abs=0.5)
    assert m.bbox == (6, 12, 12, 14, 28, 28)
    assert m.area_mm2 == pytest.approx(math.pi * 64, rel=0.05)  # the largest cross-section


def test_missing_spacing_reports_no_area() -> None:
    mask = _disc(40, 10)[None]
    m, _ = measure(mask, mask.astype(np.float32), None, None, False, "[arb'U]")
    assert m.area_mm2 is None and m.area_pct is not None and m.circularity is not None


def _reference_measure(
    component: np.ndarray,
    values: np.ndarray,
    spacing: tuple[float, float],
    slice_mm: float,
    volumetric: bool,
    offset: tuple[int, int, int],
    image_shape: tuple[int, int],
) -> tuple[object, ...]:
    """The per-pixel way: coordinates of every pixel of the component."""
    frames, rows, cols = np.nonzero(component)
    per_frame = np.bincount(frames, minlength=component.shape[0])
    largest = int(np.argmax(per_frame))
    inside = values[component]
    return (
        float(per_frame[largest] * spacing[0] * spacing[1]),
        100.0 * per_frame[largest] / (image_shape[0] * image_shape[1]),
        float(frames.size * spacing[0] * spacing[1] * slice_mm) if volumetric else None,
        float(inside.astype(np.float64).mean()),
        float(inside.max()),
        circularity(component[largest], spacing),
        int(frames.size),
        (
            int(frames.min()) + offset[0],
            int(rows.min()) + offset[1],
            int(cols.min()) + offset[2],
            int(frames.max()) + offset[0],
            int(rows.max()) + offset[1],
            int(cols.max()) + offset[2],
        ),
    )


def test_measure_matches_the_per_pixel_reference_on_random_components() -> None:

    rng = np.random.default_rng(11)
    for trial in range(40):
        shape = (int(rng.integers(1, 6)), int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        component = rng.random(shape) < rng.uniform(0.05, 0.9)
        if not component.any():
            component[tuple(int(rng.integers(0, n)) for n in shape)] = True
        values = rng.normal(40.0, 200.0, shape).astype(np.float32)
        volumetric = bool(trial % 2)
        offset = (int(rng.integers(0, 5)), int(rng.integers(0, 50)), int(rng.integers(0, 50)))
        m, frames = measure(
            component,
            values,
            (0.7, 0.6),
            2.5,
            volumetric,
            "HU",
            offset=offset,
            image_shape=(128, 96),
        )
        got = (
            m.area_mm2,
            m.area_pct,
            m.volume_mm3,
            m.mean_intensity,
            m.max_intensity,
            m.circularity,
            m.pixel_count,
            m.bbox,
        )
        want = _reference_measure(component, values, (0.7, 0.6), 2.5, volumetric, offset, (128, 96))
        # the mean is summed in float64 (order differs from numpy's pairwise mean: last bits only)
        assert got[3] == pytest.approx(want[3], rel=1e-12, abs=1e-9)
        assert got[:3] + got[4:] == want[:3] + want[4:]
        assert frames == tuple(
            int(f) + offset[0] for f in np.flatnonzero(component.any(axis=(1, 2)))
        )
        assert (
            measure(component, values, (0.7, 0.6), 2.5, volumetric, "HU", offset, (128, 96))[0] == m
        )


def test_measuring_an_empty_component_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        measure(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4), np.float32), None, None, False, "HU")


def _reference_perimeter(mask2d: np.ndarray, spacing: tuple[float, float]) -> float:
    """The outline length computed step by step (vstack, diff, norm)."""
    import cv2

    contours, _ = cv2.findContours(
        mask2d.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    row_mm, col_mm = spacing
    total = 0.0
    for contour in contours:
        points = contour.reshape(-1, 2).astype(np.float64)
        if len(points) < 3:
            total += 2 * ((np.ptp(points[:, 0]) + 1) * col_mm + (np.ptp(points[:, 1]) + 1) * row_mm)
            continue
        simplified = cv2.approxPolyDP(contour, 1.0, True).reshape(-1, 2).astype(np.float64)
        scaled = simplified * np.array([col_mm, row_mm])
        closed = np.vstack([scaled, scaled[:1]])
        total += float(np.linalg.norm(np.diff(closed, axis=0), axis=1).sum())
        total += math.pi * (row_mm + col_mm) / 2.0
    return total


def test_perimeter_matches_the_step_by_step_reference() -> None:
    from pipelines.measurements import perimeter_mm

    rng = np.random.default_rng(2)
    for _ in range(60):
        mask = rng.random((int(rng.integers(1, 25)), int(rng.integers(1, 25)))) < rng.uniform(
            0.1, 0.9
        )
        spacing = (float(rng.uniform(0.2, 2.0)), float(rng.uniform(0.2, 2.0)))
        assert perimeter_mm(mask, spacing) == _reference_perimeter(mask, spacing)


def test_long_outlines_and_strided_masks_keep_the_reference_perimeter() -> None:
    """Outlines of tens to hundreds of corners (numpy's pairwise sum adds them in blocks of 8
    and halves above 128) and masks that are strided views of a larger array."""
    from scipy import ndimage

    from pipelines.measurements import perimeter_mm

    rng = np.random.default_rng(7)
    corners = []
    for size in (40, 120, 400):
        field = ndimage.gaussian_filter(rng.random((size, size)), size / 40)
        mask = field > np.median(field)
        for view in (mask, mask[::2, 1::3], mask.T):
            spacing = (float(rng.uniform(0.2, 2.0)), float(rng.uniform(0.2, 2.0)))
            assert perimeter_mm(view, spacing) == _reference_perimeter(view, spacing)
        import cv2

        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        corners += [len(cv2.approxPolyDP(c, 1.0, True)) for c in contours if len(c) >= 3]
    assert max(corners) > 128 and any(8 <= n <= 128 for n in corners)


def test_measuring_all_components_at_once_equals_measuring_each_alone() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(5)
    for volumetric in (False, True):
        shape = (6, 40, 48) if volumetric else (1, 64, 64)
        mask = ndimage.gaussian_filter(rng.random(shape), (0, 1.5, 1.5)) > 0.56
        labels, count = ndimage.label(mask)
        assert count > 10
        values = rng.normal(40.0, 200.0, shape).astype(np.float32)
        together = measure_labels(
            labels.astype(np.uint16), count, values, (0.7, 0.6), 2.5, volumetric, "HU"
        )
        assert len(together) == count
        for index, (m, frames) in enumerate(together, start=1):
            alone, alone_frames = measure(
                labels == index, values, (0.7, 0.6), 2.5, volumetric, "HU"
            )
            assert frames == alone_frames
            assert m.mean_intensity == pytest.approx(alone.mean_intensity, rel=1e-12)
            assert (
                m.pixel_count,
                m.bbox,
                m.area_mm2,
                m.volume_mm3,
                m.max_intensity,
                m.circularity,
            ) == (
                alone.pixel_count,
                alone.bbox,
                alone.area_mm2,
                alone.volume_mm3,
                alone.max_intensity,
                alone.circularity,
            )


def test_components_far_from_the_origin_keep_their_boxes_and_values() -> None:
    """Labels padded into a larger empty volume measure the same, with boxes shifted by the pad
    (measurement looks only inside the box around all components)."""
    from scipy import ndimage

    rng = np.random.default_rng(8)
    mask = ndimage.gaussian_filter(rng.random((4, 30, 30)), (0, 1.5, 1.5)) > 0.55
    labels, count = ndimage.label(mask)
    values = rng.normal(40.0, 200.0, mask.shape).astype(np.float32)
    pad = ((3, 5), (17, 2), (9, 11))
    tight = measure_labels(
        labels.astype(np.uint16), count, values, (0.7, 0.6), 2.5, True, "HU", image_shape=(49, 50)
    )
    padded = measure_labels(
        np.pad(labels, pad).astype(np.uint16),
        count,
        np.pad(values, pad, constant_values=-1000.0),
        (0.7, 0.6),
        2.5,
        True,
        "HU",
    )
    assert count > 3 and len(padded) == count
    shift = (3, 17, 9, 3, 17, 9)
    for (m, frames), (p, padded_frames) in zip(tight, padded, strict=True):
        assert p.bbox == tuple(a + b for a, b in zip(m.bbox, shift, strict=True))
        assert padded_frames == tuple(f + 3 for f in frames)
        assert (p.pixel_count, p.mean_intensity, p.max_intensity, p.volume_mm3, p.area_pct) == (
            m.pixel_count,
            m.mean_intensity,
            m.max_intensity,
            m.volume_mm3,
            m.area_pct,
        )
        # the outline's points differ by the offset: the perimeter sum may differ in the last bit
        assert p.circularity == pytest.approx(m.circularity, rel=1e-12)


def previous_measure_labels(
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
    """``measure_labels`` before the fast paths (find_objects always, ``np.maximum.at``, every
    frame gathered): the reference the faster one must equal to the last bit."""
    from scipy import ndimage

    from pipelines.measurements import _circularity
    from pipelines.postprocess import foreground_box

    around = foreground_box(labels)
    assert around is not None
    starts = [axis.start for axis in around]
    found = ndimage.find_objects(labels[around], max_label=count)
    boxes = [
        tuple(slice(a.start + s, a.stop + s) for a, s in zip(box, starts, strict=True))
        for box in found
        if box is not None
    ]
    frames_box, rows_box, cols_box = around
    per_frame = np.zeros((count + 1, labels.shape[0]), np.int64)
    sums = np.zeros(count + 1, np.float64)
    maxima = np.full(count + 1, -np.inf)
    for f in range(frames_box.start, frames_box.stop):
        flat = labels[f, rows_box, cols_box].ravel()
        where = np.flatnonzero(flat)
        if where.size == 0:
            continue
        ids = flat[where].astype(np.intp)
        inside = values[f, rows_box, cols_box].ravel()[where].astype(np.float64)
        per_frame[:, f] = np.bincount(ids, minlength=count + 1)
        sums += np.bincount(ids, weights=inside, minlength=count + 1)
        np.maximum.at(maxima, ids, inside)
    spacing = pixel_spacing_mm or (1.0, 1.0)
    rows_total, cols_total = image_shape or (labels.shape[1], labels.shape[2])
    with_volume = volumetric and pixel_spacing_mm is not None and bool(slice_spacing_mm)
    results = []
    for index, box in enumerate(boxes, start=1):
        counts = per_frame[index]
        pixel_count = int(counts.sum())
        largest = int(np.argmax(counts))
        largest_count = int(counts[largest])
        rows = slice(max(box[1].start - 1, 0), box[1].stop + 1)
        cols = slice(max(box[2].start - 1, 0), box[2].stop + 1)
        cross_section = labels[largest, rows, cols] == index
        measurements = Measurements(
            area_mm2=float(largest_count * spacing[0] * spacing[1]) if pixel_spacing_mm else None,
            area_pct=100.0 * largest_count / (rows_total * cols_total),
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
        results.append((measurements, tuple(int(f) + offset[0] for f in np.flatnonzero(counts))))
    return results


def noisy_masks(rng: np.random.Generator, volumetric: bool) -> list[np.ndarray]:
    """What random weights give: smoothed noise thresholded into many components (with holes,
    touching the borders), one component filling nearly or exactly everything, sparse specks."""
    from scipy import ndimage

    shape = (7, 48, 56) if volumetric else (1, 96, 80)
    smooth = ndimage.gaussian_filter(rng.random(shape), (0.8 if volumetric else 0, 1.5, 1.5))
    huge = np.ones(shape, bool)
    huge[:, 20:23, 30:33] = False  # a hole in every frame
    huge[0, 0, :5] = False
    full = np.ones(shape, bool)  # every pixel: frames read whole, nothing to leave out
    return [smooth > 0.52, smooth > 0.47, huge, full, rng.random(shape) < 0.03]


@pytest.mark.parametrize("volumetric", [False, True])
def test_measure_labels_equals_the_previous_implementation_on_noisy_masks(
    volumetric: bool,
) -> None:
    """Dense and sparse frames, many components and one, offsets and image shapes: every
    measurement and frame list is what the previous implementation gave, to the last bit."""
    from scipy import ndimage

    from pipelines.postprocess import connectivity

    rng = np.random.default_rng(21)
    for mask in noisy_masks(rng, volumetric):
        labels, count = ndimage.label(mask, structure=connectivity(volumetric))
        assert count >= 1
        values = rng.normal(40.0, 300.0, mask.shape).astype(np.float32)
        for offset, image_shape in (((0, 0, 0), None), ((3, 11, 7), (200, 190))):
            args = (values, (0.7, 0.6), 2.5, volumetric, "HU", offset, image_shape)
            for dtype in (np.uint8, np.uint16, np.int32):
                if count > np.iinfo(dtype).max:
                    continue
                typed = labels.astype(dtype)
                assert measure_labels(typed, count, *args) == previous_measure_labels(
                    typed, count, *args
                )
            whole = (labels > 0).astype(np.uint8)  # all components as one label
            assert measure_labels(whole, 1, *args) == previous_measure_labels(whole, 1, *args)
