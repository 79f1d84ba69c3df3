from __future__ import annotations

import numpy as np

from pipelines.postprocess import clean_mask, postprocess_label_map, threshold_labels
from pipelines.spec import PostprocessSpec


def _disc(shape: tuple[int, int], center: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def test_per_label_thresholds() -> None:
    probs = np.zeros((2, 1, 4, 4), np.float32)
    probs[0, 0, 0, 0] = 0.6  # label a: passes 0.5
    probs[1, 0, 0, 1] = 0.6  # label b: fails its 0.7
    probs[0, 0, 1, 1], probs[1, 0, 1, 1] = 0.55, 0.8  # both pass: the more probable wins
    spec = PostprocessSpec(label_thresholds={"b": 0.7})
    out = threshold_labels(probs, ["a", "b"], spec)
    assert out[0, 0, 0] == 1 and out[0, 0, 1] == 0 and out[0, 1, 1] == 2


def test_min_component_size_and_hole_filling() -> None:
    mask = np.zeros((1, 40, 40), bool)
    mask[0] = _disc((40, 40), (20, 20), 10)
    mask[0, 18:22, 18:22] = False  # a hole
    mask[0, 2, 2] = True  # a speck
    spec = PostprocessSpec(min_component_mm2=4.0)
    out = clean_mask(mask, spec, volumetric=False, pixel_area_mm2=0.5 * 0.5, voxel_volume_mm3=None)
    assert not out[0, 2, 2], "a 0.25 mm² speck is below 4 mm²"
    assert out[0, 20, 20], "the hole is filled"
    kept = clean_mask(mask, PostprocessSpec(fill_holes=False), False, 0.25, None)
    assert kept[0, 2, 2] and not kept[0, 20, 20]


def test_keep_largest_and_2d_frames_never_merge() -> None:
    mask = np.zeros((2, 30, 30), bool)
    mask[0, 5:10, 5:10] = True  # 25 px
    mask[1, 5:12, 5:12] = True  # 49 px, same place on the next image
    as_images = clean_mask(mask, PostprocessSpec(keep_largest=True), False, None, None)
    assert not as_images[0].any() and as_images[1].sum() == 49
    as_volume = clean_mask(mask, PostprocessSpec(keep_largest=True), True, None, None)
    assert as_volume.sum() == 25 + 49  # one 3D component


def test_postprocess_label_map_from_probabilities() -> None:
    probs = np.zeros((1, 1, 30, 30), np.float32)
    probs[0, 0] = _disc((30, 30), (15, 15), 6).astype(np.float32) * 0.9
    label_map = postprocess_label_map(probs, ["lesion"], PostprocessSpec(), False, 1.0, None)
    assert label_map.dtype == np.uint8
    assert label_map.sum() == _disc((30, 30), (15, 15), 6).sum()


def test_single_label_threshold_is_inclusive() -> None:
    probs = np.array([[[[0.49, 0.5, 0.51]]]], np.float32)
    assert threshold_labels(probs, ["lesion"], PostprocessSpec()).tolist() == [[[0, 1, 1]]]


def test_at_most_max_components_are_kept_largest_first() -> None:
    mask = np.zeros((1, 40, 40), bool)
    for i in range(6):
        mask[0, 2 + 6 * i : 2 + 6 * i + 1 + (i % 3), 5:8] = True  # sizes 3, 6, 9, 3, 6, 9
    out = clean_mask(mask, PostprocessSpec(max_components=2, fill_holes=False), False, None, None)
    from scipy import ndimage

    labels, count = ndimage.label(out[0])
    assert count == 2 and out.sum() == 18
