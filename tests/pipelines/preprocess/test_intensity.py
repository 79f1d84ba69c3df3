"""Intensity scaling for models: percentile range, window and z-score, frame by frame or whole."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from pipelines.preprocess import intensity
from pipelines.preprocess.intensity import percentile_range
from pipelines.spec import PreprocessingSpec
from tests.pipelines.preprocess.test_percentiles import QUANTILES, sample_images


def _old_percentile_range(values: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """The computation before the histogram path (np.percentile on every image)."""
    low, high = np.percentile(values, [lower, upper])
    if high <= low:
        return np.zeros_like(values, dtype=np.float32)
    out = values - low
    out /= high - low
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


@pytest.mark.parametrize("q", QUANTILES)
def test_percentile_range_equals_the_old_computation(q: tuple[float, float]) -> None:
    """The unit scaling on counted percentiles: the values np.percentile's scaling gave."""
    for image in sample_images(np.random.default_rng(21)):
        old, new = _old_percentile_range(image, *q), percentile_range(image, *q)
        assert new.dtype == old.dtype == np.float32
        np.testing.assert_array_equal(new, old)


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
