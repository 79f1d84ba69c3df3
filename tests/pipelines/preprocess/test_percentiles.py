"""Counted percentiles: numpy's percentiles bit for bit, without its sort for integer images."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.preprocess import percentiles as percentiles_module
from pipelines.preprocess.percentiles import percentiles


def sample_images(rng: np.random.Generator) -> list[np.ndarray]:
    """Images of every kind the counted path must get right (shared with test_intensity)."""
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


QUANTILES = [(0.5, 99.5), (0.0, 100.0), (1.0, 99.0), (2.5, 97.5), (37.3, 61.9)]


@pytest.mark.parametrize("q", QUANTILES)
def test_percentiles_equal_numpy_bit_for_bit(q: tuple[float, float]) -> None:
    for image in sample_images(np.random.default_rng(21)):
        ours, theirs = percentiles(image, list(q)), np.percentile(image, list(q))
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)


def test_percentiles_random_sizes_and_quantiles() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        size = int(rng.integers(1, 2000))
        image = (rng.integers(-2000, 2000, size) * int(rng.choice([1, -1, 5]))).astype(np.float32)
        q = [float(rng.uniform(0, 100)), float(rng.uniform(0, 100))]
        np.testing.assert_array_equal(percentiles(image, q), np.percentile(image, q))


def test_integer_images_are_counted_not_sorted(monkeypatch: pytest.MonkeyPatch) -> None:
    """CT and CR pixels (integers) never reach np.percentile's partial sort (~3 ms a slice)."""
    ct = np.random.default_rng(1).integers(-1024, 3072, (4, 64, 64)).astype(np.float32)
    expected = [np.percentile(frame, [0.5, 99.5]) for frame in ct]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("np.percentile called for an integer image")

    monkeypatch.setattr(np, "percentile", refuse)
    for frame, numpys in zip(ct, expected, strict=True):
        np.testing.assert_array_equal(percentiles(frame, [0.5, 99.5]), numpys)


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
