"""Percentile scaling: the histogram path gives numpy's percentiles bit for bit, and is taken."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from pipelines.preprocess import intensity
from pipelines.preprocess import percentiles as percentiles_module
from pipelines.preprocess.intensity import percentile_range, percentiles
from pipelines.spec import PreprocessingSpec


def _old_percentile_range(values: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """The computation before the histogram path (np.percentile on every image)."""
    low, high = np.percentile(values, [lower, upper])
    if high <= low:
        return np.zeros_like(values, dtype=np.float32)
    out = values - low
    out /= high - low
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def _images(rng: np.random.Generator) -> list[np.ndarray]:
    ct = rng.integers(-1024, 3072, (64, 48)).astype(np.float32)  # slope 1, intercept -1024
    return [
        ct,
        7.0 - 3.0 * rng.integers(0, 4096, (33, 17)).astype(np.float32),  # negative slope
        rng.integers(0, 65536, (40, 40)).astype(np.float32),  # 16-bit CR
        rng.integers(0, 3, (9, 11)).astype(np.float32),  # few distinct values
        np.full((16, 16), -5.0, np.float32),  # constant slice
        np.array([[42.0]], np.float32),  # one pixel
        rng.normal(0.0, 100.0, (30, 30)).astype(np.float32),  # fractional: numpy's path
        rng.integers(-100, 100, (20, 20)).astype(np.float64),  # float64 integers
        np.where(rng.random((20, 20)) < 0.1, np.nan, ct[:20, :20]),  # NaN: numpy's path
        np.array([[0.0, 2.0**25]], np.float32),  # beyond float32's exact integers
        rng.integers(0, 4096, (25, 31)).astype(np.uint16),  # stored pixels (display path)
        rng.integers(-2000, 2000, (25, 31)).astype(np.int16),
    ]


@pytest.mark.parametrize("q", [(0.5, 99.5), (0.0, 100.0), (1.0, 99.0), (2.5, 97.5), (37.3, 61.9)])
def test_percentiles_equal_numpy_bit_for_bit(q: tuple[float, float]) -> None:
    rng = np.random.default_rng(21)
    for image in _images(rng):
        ours, theirs = percentiles(image, list(q)), np.percentile(image, list(q))
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)
        old, new = _old_percentile_range(image, *q), percentile_range(image, *q)
        assert new.dtype == old.dtype == np.float32
        np.testing.assert_array_equal(new, old)


def test_percentiles_random_sizes_and_quantiles() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        size = int(rng.integers(1, 2000))
        image = (rng.integers(-2000, 2000, size) * int(rng.choice([1, -1, 5]))).astype(np.float32)
        q = [float(rng.uniform(0, 100)), float(rng.uniform(0, 100))]
        np.testing.assert_array_equal(percentiles(image, q), np.percentile(image, q))


def test_integer_images_are_counted_not_sorted(monkeypatch: pytest.MonkeyPatch) -> None:
    """CT and CR pixels (integers) never reach np.percentile's partial sort (~3 ms a slice)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("np.percentile called for an integer image")

    ct = np.random.default_rng(1).integers(-1024, 3072, (4, 64, 64)).astype(np.float32)
    expected = [_old_percentile_range(frame, 0.5, 99.5) for frame in ct]
    monkeypatch.setattr(intensity.np, "percentile", refuse)
    for frame, old in zip(ct, expected, strict=True):
        np.testing.assert_array_equal(percentile_range(frame, 0.5, 99.5), old)


@pytest.mark.parametrize(
    "card",
    [
        SimpleNamespace(mode="percentile", lower_percentile=0.5, upper_percentile=99.5),
        SimpleNamespace(mode="percentile", lower_percentile=0.0, upper_percentile=100.0),
        SimpleNamespace(mode="window", center=40.0, width=400.0),
        SimpleNamespace(mode="zscore"),
    ],
)
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_per_frame_images_equal_the_old_stacking(card: Any, photometric: str) -> None:
    """Each frame written straight into the stacked result: the values of the old
    ``np.stack`` of per-frame results (constant frames included)."""
    rng = np.random.default_rng(5)
    values = rng.integers(-1024, 3072, (4, 40, 30)).astype(np.float32)
    values[2] = 7.0  # a constant frame
    values[3] += rng.random((40, 30), dtype=np.float32)  # fractional: numpy's percentiles
    series = SimpleNamespace(
        values=values, is_color=False, photometric=photometric, file_voi_display=None
    )
    if card.mode == "window":
        old = np.stack([_old_window(frame, card.center, card.width) for frame in values])
    elif card.mode == "zscore":
        old = np.stack([intensity.zscore(frame) for frame in values])
    else:
        lower, upper = card.lower_percentile, card.upper_percentile
        old = np.stack([_old_percentile_range(frame, lower, upper) for frame in values])
    if photometric == "MONOCHROME1":
        old = -old if card.mode == "zscore" else 1.0 - old
    new = intensity.grey_image(series, card, PreprocessingSpec(), per_frame=True)  # type: ignore[arg-type]
    assert new.dtype == np.float32
    np.testing.assert_array_equal(new, old.astype(np.float32))


def _old_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    low = center - width / 2.0
    out = values - low
    out /= width
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def test_one_fraction_anywhere_takes_numpys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values are checked and counted in chunks; a fraction in the last one still counts."""
    monkeypatch.setattr(percentiles_module, "_CHUNK", 64)
    volume = np.random.default_rng(2).integers(-1024, 3072, (3, 20, 20)).astype(np.float32)
    volume[-1, -1, -1] = 0.5
    q = [0.5, 99.5]
    np.testing.assert_array_equal(percentiles(volume, q), np.percentile(volume, q))
    assert percentiles_module._integer_histogram(volume) is None
    volume[-1, -1, -1] = 1.0
    assert percentiles_module._integer_histogram(volume) is not None


@pytest.mark.parametrize(
    "card",
    [
        SimpleNamespace(mode="percentile", lower_percentile=0.5, upper_percentile=99.5),
        SimpleNamespace(mode="window", center=40.0, width=400.0),
    ],
)
def test_volume_scaled_frame_by_frame_equals_the_whole_array_at_once(card: Any) -> None:
    """3D inputs: statistics over the volume, the arithmetic a frame at a time, same values."""
    values = np.random.default_rng(6).integers(-1024, 3072, (5, 24, 32)).astype(np.float32)
    values[4] += 0.25  # fractional voxels: numpy's percentiles
    series = SimpleNamespace(
        values=values, is_color=False, photometric="MONOCHROME2", file_voi_display=None
    )
    if card.mode == "window":
        old = _old_window(values, card.center, card.width)
    else:
        old = _old_percentile_range(values, card.lower_percentile, card.upper_percentile)
    new = intensity.grey_image(series, card, PreprocessingSpec(), per_frame=False)  # type: ignore[arg-type]
    assert new.dtype == np.float32
    np.testing.assert_array_equal(new, old)
