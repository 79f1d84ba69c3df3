"""One-pass component statistics equal scipy's and numpy's, bit for bit, on every label type and
on views of larger arrays (what measuring a crop of a CT passes)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipelines.label_statistics import label_statistics


def _numpy_way(
    labels: np.ndarray, values: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[slice, ...] | None]]:
    per_frame = np.zeros((count + 1, labels.shape[0]), np.int64)
    sums = np.zeros(count + 1)
    maxima = np.full(count + 1, -np.inf)
    for f in range(labels.shape[0]):
        ids = labels[f].ravel().astype(np.intp)
        inside = values[f].ravel().astype(np.float64)
        per_frame[:, f] = np.bincount(ids, minlength=count + 1)
        sums += np.bincount(ids, weights=inside, minlength=count + 1)
        np.maximum.at(maxima, ids[ids > 0], inside[ids > 0])
    return per_frame, sums, maxima, ndimage.find_objects(labels, max_label=count)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32, np.int64])
@pytest.mark.parametrize("strided", [False, True])
def test_counts_sums_maxima_and_boxes_equal_the_numpy_way(dtype: type, strided: bool) -> None:
    rng = np.random.default_rng(5)
    smooth = ndimage.gaussian_filter(rng.random((9, 70, 64)), (0.8, 1.5, 1.5))
    labels, count = ndimage.label(smooth > 0.52, structure=np.ones((3, 3, 3)))
    values = rng.normal(40.0, 300.0, labels.shape).astype(np.float32)
    labels = labels.astype(dtype)
    if strided:  # a crop of a larger volume, as measure_labels passes
        big = np.zeros((12, 80, 90), dtype)
        big[2:11, 5:75, 20:84] = labels
        labels = big[2:11, 5:75, 20:84]
        big_values = np.zeros(big.shape, np.float32)
        big_values[2:11, 5:75, 20:84] = values
        values = big_values[2:11, 5:75, 20:84]
    assert count > 20
    stats = label_statistics(labels, values, count)
    per_frame, sums, maxima, boxes = _numpy_way(labels, values, count)
    np.testing.assert_array_equal(stats.per_frame[1:], per_frame[1:])
    np.testing.assert_array_equal(stats.sums[1:], sums[1:])  # same order of additions: exact
    np.testing.assert_array_equal(stats.maxima[1:], maxima[1:])
    for index, box in enumerate(boxes, start=1):
        assert box is not None
        assert tuple(stats.lower[index]) == tuple(axis.start for axis in box)
        assert tuple(stats.upper[index]) == tuple(axis.stop - 1 for axis in box)


def test_a_component_number_without_pixels_is_marked_and_nan_propagates() -> None:
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[1, 1:3, 2] = 1
    labels[0, 0, 0] = 3
    values = np.arange(32, dtype=np.float64).reshape(labels.shape)
    values[0, 0, 0] = np.nan
    stats = label_statistics(labels, values, 3)
    assert stats.upper[2, 0] == -1 and tuple(stats.lower[2]) == (0, 0, 0)
    assert stats.per_frame[1].tolist() == [0, 2] and stats.maxima[1] == values[1, 2, 2]
    assert tuple(stats.lower[1]) == (1, 1, 2) and tuple(stats.upper[1]) == (1, 2, 2)
    assert np.isnan(stats.maxima[3]) and np.isnan(stats.sums[3])


def test_labels_outside_the_count_are_an_error() -> None:
    labels = np.zeros((1, 3, 3), np.int16)
    labels[0, 1, 1] = 4
    with pytest.raises(ValueError, match="label 4 is outside 0..2"):
        label_statistics(labels, np.zeros(labels.shape, np.float32), 2)
    labels[0, 1, 1] = -1
    with pytest.raises(ValueError, match="label -1"):
        label_statistics(labels, np.zeros(labels.shape, np.float32), 2)
    with pytest.raises(ValueError, match="integers"):
        label_statistics(labels.astype(np.float32), np.zeros(labels.shape, np.float32), 2)
