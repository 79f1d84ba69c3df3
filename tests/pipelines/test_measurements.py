from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.measurements import circularity, measure


def _disc(n: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    return (yy - n / 2) ** 2 + (xx - n / 2) ** 2 <= r * r


@pytest.mark.parametrize("radius", [10, 20, 40])
def test_disc_area_and_circularity(radius: int) -> None:
    spacing = (0.5, 0.5)
    mask = _disc(4 * radius, radius)[None]
    values = np.where(mask, 60.0, -1000.0).astype(np.float32)
    m = measure(mask, values, spacing, None, volumetric=False, intensity_unit="HU")
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
    m = measure(sphere, hu.astype(np.float32), (1.0, 1.0), 2.0, volumetric=True, intensity_unit="HU")
    assert m.volume_mm3 == pytest.approx(4 / 3 * math.pi * 8**3, rel=0.05)
    assert m.mean_intensity == pytest.approx(45.0, abs=0.5)
    assert m.bbox == (6, 12, 12, 14, 28, 28)
    assert m.area_mm2 == pytest.approx(math.pi * 64, rel=0.05)  # the largest cross-section


def test_missing_spacing_reports_no_area() -> None:
    mask = _disc(40, 10)[None]
    m = measure(mask, mask.astype(np.float32), None, None, False, "[arb'U]")
    assert m.area_mm2 is None and m.area_pct is not None and m.circularity is not None
