"""Compiled component sizing and renumbering equal numpy's ``bincount`` and table lookup on every
label type, write into views of larger arrays (a box of the mask) and refuse labels they cannot
place."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipelines.component_numbers import component_sizes, paint_components, renumber_components


def _noisy_labels(dtype: type) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(11)
    smooth = ndimage.gaussian_filter(rng.random((7, 60, 50)), (0.6, 1.0, 1.0))
    labels, count = ndimage.label(smooth > 0.55, structure=np.ones((3, 3, 3)))
    assert 20 < count < 255  # many components, as a random-weight model leaves
    return labels.astype(dtype), count


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32, np.int64])
def test_sizes_equal_bincount(dtype: type) -> None:
    labels, count = _noisy_labels(dtype)
    expected = np.bincount(labels.ravel().astype(np.intp), minlength=count + 1)[1:]
    sizes = component_sizes(labels, count)
    assert sizes.dtype == np.int64 and sizes.tolist() == expected.tolist()


def test_sizes_of_numbers_without_pixels_are_zero_and_one_component_is_its_pixels() -> None:
    labels = np.zeros((1, 4, 4), np.uint16)
    labels[0, 0, :3] = 1
    labels[0, 3, 3] = 3
    assert component_sizes(labels, 4).tolist() == [3, 0, 1, 0]
    assert component_sizes((labels == 1).astype(np.uint8), 1).tolist() == [3]


def test_a_label_above_the_count_is_an_error_not_a_write_past_the_sizes() -> None:
    labels = np.array([[[0, 1, 5]]], np.uint16)
    with pytest.raises(ValueError, match="label 5 is outside 0..2"):
        component_sizes(labels, 2)


@pytest.mark.parametrize("label_dtype", [np.uint16, np.uint32, np.int32])
@pytest.mark.parametrize("kept_dtype", [np.uint8, np.uint16])
def test_renumbering_writes_the_lookup_and_the_mask_into_a_box_of_larger_arrays(
    label_dtype: type, kept_dtype: type
) -> None:
    labels, count = _noisy_labels(label_dtype)
    rng = np.random.default_rng(3)
    keep = rng.random(count) < 0.4
    table = np.zeros(count + 1, kept_dtype)
    table[1:][keep] = np.arange(1, int(keep.sum()) + 1)
    box = (slice(2, 9), slice(5, 65), slice(10, 60))  # the foreground box of a bigger mask
    kept_labels = np.full((11, 70, 64), 77, kept_dtype)
    kept_labels[box] = 0  # freshly allocated where it is written
    mask = np.zeros((11, 70, 64), bool)
    mask[box] = labels > 0
    outside = ~np.zeros(mask.shape, bool)
    outside[box] = False
    mask[outside] = True  # outside the box: must stay as it was

    renumber_components(labels, table, kept_labels[box], mask[box])

    expected = table[labels.astype(np.intp)]
    assert np.array_equal(kept_labels[box], expected)
    assert np.array_equal(mask[box], expected != 0)
    assert (kept_labels[outside] == 77).all() and mask[outside].all()


def test_renumbering_refuses_labels_outside_the_table_and_mismatched_shapes() -> None:
    labels = np.array([[[0, 1, 4]]], np.uint16)
    table = np.array([0, 1, 0], np.uint8)
    out, mask = np.zeros(labels.shape, np.uint8), np.zeros(labels.shape, bool)
    with pytest.raises(ValueError, match="label 4 is outside the numbering table"):
        renumber_components(labels, table, out, mask)
    with pytest.raises(ValueError, match="must be one"):
        renumber_components(labels, table, out[..., :2], mask)


@pytest.mark.parametrize("label_dtype", [np.uint8, np.uint16, np.uint32])
def test_painting_writes_numbers_only_under_the_labels_and_keeps_the_rest(
    label_dtype: type,
) -> None:
    labels, count = _noisy_labels(label_dtype)
    table = np.zeros(count + 1, np.uint16)
    table[1:] = np.arange(count, 0, -1) + 500  # numbers other than the labels
    finding_map = np.zeros((11, 70, 64), np.uint16)
    finding_map[0] = 9  # an earlier label's findings outside this label's box
    box = (slice(2, 9), slice(5, 65), slice(10, 60))
    under = finding_map[box]
    under[labels == 0] = 7  # and beside its pixels inside the box
    before = finding_map.copy()

    paint_components(labels, table, finding_map[box])

    expected = before.copy()
    expected[box] = np.where(labels > 0, table[labels.astype(np.intp)], before[box])
    assert np.array_equal(finding_map, expected)


def test_painting_refuses_numbers_the_map_cannot_hold_and_labels_outside_the_table() -> None:
    labels = np.array([[[0, 1, 2]]], np.uint8)
    with pytest.raises(ValueError, match="do not fit uint8"):
        paint_components(labels, np.array([0, 1, 300], np.uint16), np.zeros(labels.shape, np.uint8))
    with pytest.raises(ValueError, match="numbers -1..1 do not fit uint16"):
        paint_components(labels, np.array([0, -1, 1], np.int64), np.zeros(labels.shape, np.uint16))
    with pytest.raises(ValueError, match="label 2 is outside the numbering table"):
        paint_components(labels, np.array([0, 1], np.uint16), np.zeros(labels.shape, np.uint16))
