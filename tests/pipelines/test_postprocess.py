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


# ---- the fast paths against straightforward references --------------------------------------
def _reference_clean(
    mask: np.ndarray,
    spec: PostprocessSpec,
    volumetric: bool,
    area: float | None,
    volume: float | None,
) -> np.ndarray:
    """Per-frame ndimage.binary_fill_holes, one labelling, full-size lookup (the plain way)."""
    from scipy import ndimage

    from pipelines.postprocess import connectivity

    mask = mask.copy()
    if spec.fill_holes:
        for index in range(mask.shape[0]):
            mask[index] = ndimage.binary_fill_holes(mask[index])
    labels, count = ndimage.label(mask, structure=connectivity(volumetric))
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = sizes >= spec.min_component_pixels
    if volumetric and volume and spec.min_component_mm3 > 0:
        keep &= sizes * volume >= spec.min_component_mm3
    if not volumetric and area and spec.min_component_mm2 > 0:
        keep &= sizes * area >= spec.min_component_mm2
    limit = 1 if spec.keep_largest else spec.max_components
    if int(keep.sum()) > limit:
        ranked = np.argsort(np.where(keep, sizes, -1), kind="stable")[::-1][:limit]
        keep = np.zeros_like(keep)
        keep[ranked] = True
    return np.concatenate([[False], keep])[labels]


def _noisy_probabilities(
    rng: np.random.Generator, labels: int, shape: tuple[int, ...]
) -> np.ndarray:
    from scipy import ndimage

    probs = rng.random((labels, *shape)).astype(np.float32)
    smooth = (1, 1, int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    probs = ndimage.uniform_filter(probs, size=smooth)
    return ((probs - probs.min()) / (probs.max() - probs.min() + 1e-6)).astype(np.float32)


def test_hole_filling_matches_binary_fill_holes_on_every_frame() -> None:
    from scipy import ndimage

    from pipelines.postprocess import fill_holes_per_frame

    rng = np.random.default_rng(7)
    for _ in range(30):
        mask = rng.random((3, int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.uniform(
            0.2, 0.8
        )
        mask[1] = False  # an empty frame
        expected = np.stack([ndimage.binary_fill_holes(frame) for frame in mask])
        fill_holes_per_frame(mask)
        assert np.array_equal(mask, expected)
    ring = np.zeros((1, 5, 5), bool)
    ring[0, 1:4, 1:4], ring[0, 2, 2] = True, False  # a hole
    ring[0, 0, 1:4] = True  # touching the border: still a hole inside
    diagonal = ring.copy()
    diagonal[0, 1, 1] = False  # the centre now meets the outside diagonally only: still a hole
    for mask in (ring, diagonal):
        expected = ndimage.binary_fill_holes(mask[0])
        fill_holes_per_frame(mask)
        assert np.array_equal(mask[0], expected)


def test_clean_mask_and_label_map_match_the_plain_computation() -> None:
    """Random noisy masks (2D stacks and volumes, several labels) give the same label maps, and
    the components handed on are exactly a fresh labelling of each label in the map."""
    from scipy import ndimage

    from pipelines.postprocess import connectivity, postprocess_components

    rng = np.random.default_rng(3)
    for trial in range(40):
        volumetric = bool(trial % 2)
        names = ["a", "b", "c"][: int(rng.integers(1, 4))]
        shape = (int(rng.integers(1, 5)), int(rng.integers(4, 50)), int(rng.integers(4, 50)))
        probs = _noisy_probabilities(rng, len(names), shape)
        if trial % 4 >= 2:  # foreground in a corner of a larger, empty volume (labelled in a box)
            before = [int(rng.integers(0, 6)) for _ in range(3)]
            probs = np.pad(probs, [(0, 0)] + [(b, int(rng.integers(0, 6))) for b in before])
        spec = PostprocessSpec(
            threshold=float(rng.uniform(0.3, 0.7)),
            min_component_pixels=int(rng.integers(1, 8)),
            min_component_mm2=float(rng.choice([0.0, 2.0])),
            min_component_mm3=float(rng.choice([0.0, 6.0])),
            fill_holes=bool(rng.integers(0, 2)),
            keep_largest=bool(rng.integers(0, 4) == 0),
            max_components=int(rng.integers(1, 30)),
        )
        raw = threshold_labels(probs, names, spec)
        expected = np.zeros_like(raw)
        for value in range(1, len(names) + 1):
            mask = raw == value
            assert np.array_equal(
                clean_mask(mask, spec, volumetric, 0.5, 1.25),
                _reference_clean(mask, spec, volumetric, 0.5, 1.25),
            )
            cleaned = _reference_clean(mask, spec, volumetric, 0.5, 1.25)
            expected[cleaned & (expected == 0)] = value
        label_map, components = postprocess_components(probs, names, spec, volumetric, 0.5, 1.25)
        assert np.array_equal(label_map, expected)
        assert np.array_equal(
            postprocess_label_map(probs, names, spec, volumetric, 0.5, 1.25), expected
        )
        assert 1 in components
        for value, found in components.items():
            labels, count = ndimage.label(label_map == value, structure=connectivity(volumetric))
            assert found.count == count
            assert np.array_equal(found.whole(label_map.shape), labels)
            box = found.region()  # every component lies inside the crop
            assert int(np.count_nonzero(found.labels)) == int(np.count_nonzero(labels))
            assert np.array_equal(found.labels, labels[box])
            assert found.volumetric is volumetric


def test_foreground_box_is_the_tightest_box_around_the_mask() -> None:
    from pipelines.postprocess import foreground_box

    mask = np.zeros((6, 20, 30), bool)
    assert foreground_box(mask) is None
    mask[2, 5, 7] = mask[4, 11, 3] = True
    assert foreground_box(mask) == (slice(2, 5), slice(5, 12), slice(3, 8))


def test_more_components_than_uint16_labels() -> None:
    """90 000 single-pixel components: labelling falls back from uint16 to int32, and keeping
    them all numbers them in uint32."""
    from pipelines.postprocess import postprocess_components

    probs = np.zeros((1, 1, 600, 600), np.float32)
    probs[0, 0, ::2, ::2] = 0.9
    spec = PostprocessSpec(max_components=100_000)
    label_map, components = postprocess_components(probs, ["lesion"], spec, False, None, None)
    assert int(label_map.sum()) == 90_000
    assert components[1].count == 90_000 and int(components[1].labels.max()) == 90_000
    few = PostprocessSpec(max_components=3)
    assert int(postprocess_label_map(probs, ["lesion"], few, False, None, None).sum()) == 3


def test_labelling_numbers_components_as_ndimage_label_does() -> None:
    """cc3d labelling against scipy's, for volumes (26-connected) and 2D stacks (per frame),
    including a stack whose frames together hold more components than uint16 numbers."""
    from scipy import ndimage

    from pipelines.postprocess import connectivity, label_components

    rng = np.random.default_rng(11)
    dotted = np.zeros((2, 400, 400), bool)
    dotted[:, ::2, ::2] = True  # 40 000 single pixels per frame, 80 000 in all
    cases = [
        rng.random((int(rng.integers(1, 6)), 37, 41)) < rng.uniform(0.2, 0.7) for _ in range(20)
    ]
    # thin volumes: cc3d 4.1.1 raises on some (the reason pyproject keeps it below 4)
    thin = [rng.random(shape) < 0.5 for shape in [(1, 11, 1), (1, 1, 13), (7, 1, 1), (2, 1, 9)] * 5]
    column = np.array([0, 1, 1, 0, 0, 1, 0, 1, 0, 1, 1], bool).reshape(1, 11, 1)
    for index, mask in enumerate([*cases, *thin, column, dotted]):
        for volumetric in (True, False):
            expected, count = ndimage.label(mask, structure=connectivity(volumetric))
            padded = np.pad(mask, 3)[3:-3, 3:-3, 3:-3]  # the same mask as a strided view
            for view in (mask, padded):
                found = label_components(view, volumetric)
                assert found.count == count, index
                assert np.array_equal(found.labels, expected), index


def _softmax_labels(classes: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """(classes - 1, ...) foreground probabilities of a random softmax over ``classes`` classes."""
    logits = np.random.default_rng(seed).normal(0, 2, (classes, *shape)).astype(np.float32)
    exp = np.exp(logits - logits.max(axis=0))
    return (exp / exp.sum(axis=0))[1:]


def test_exclusive_many_labels_are_the_argmax_over_background_and_labels() -> None:
    probs = _softmax_labels(105, (3, 20, 20))
    names = [f"organ{i}" for i in range(1, 105)]
    independent = threshold_labels(probs, names, PostprocessSpec())
    exclusive = threshold_labels(probs, names, PostprocessSpec(), exclusive=True)
    background = 1 - probs.sum(axis=0)
    expected = np.argmax(np.concatenate([background[None], probs]), axis=0)
    np.testing.assert_array_equal(exclusive, expected)
    assert (exclusive > 0).mean() > 0.9  # 104 organs vs one background class
    assert (independent > 0).mean() < (exclusive > 0).mean()  # 0.5 per label labels far less


def test_exclusive_labels_honour_an_explicit_label_threshold() -> None:
    probs = _softmax_labels(4, (2, 16, 16), seed=1)
    names = ["a", "b", "c"]
    plain = threshold_labels(probs, names, PostprocessSpec(), exclusive=True)
    strict = threshold_labels(
        probs, names, PostprocessSpec(label_thresholds={"b": 0.9}), exclusive=True
    )
    assert ((strict == 2) <= (plain == 2)).all()
    assert (probs[1][strict == 2] >= 0.9).all()
    assert (strict == 2).sum() < (plain == 2).sum()


def test_threshold_into_a_slab_of_the_label_map_equals_the_returned_map() -> None:
    """Writing the label map slab by slab (``out``) gives what thresholding returns, for one
    label (compared straight into the map, values at and around the threshold), several and
    mutually exclusive ones; nothing outside the slab is touched."""
    rng = np.random.default_rng(4)
    half = np.float32(0.5)
    for names, exclusive in ((["a"], False), (["a", "b", "c"], False), (["a", "b"], True)):
        probs = rng.random((len(names), 6, 8, 9), dtype=np.float32)
        probs /= max(1.0, float(probs.sum(axis=0).max()))
        probs[0, 0, 0, :3] = [np.nextafter(half, 0), half, np.nextafter(half, 1)]
        spec = PostprocessSpec(label_thresholds={"b": 0.3})
        label_map = np.full((10, 8, 9), 7, np.uint8)
        written = threshold_labels(probs, names, spec, exclusive, out=label_map[2:8])
        expected = threshold_labels(probs, names, spec, exclusive)
        assert np.shares_memory(written, label_map)
        np.testing.assert_array_equal(label_map[2:8], expected)
        assert (label_map[:2] == 7).all() and (label_map[8:] == 7).all()
    assert threshold_labels(probs[:1], ["a"], spec).tolist()[0][0][:3] == [0, 1, 1]
