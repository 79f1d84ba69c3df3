"""Forward/inverse maps between source pixels and model input: results land on source pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias

from pipelines.preprocess.geometry import (
    Letterbox,
    VolumeResampling,
    orientation_label,
    resize_bilinear,
)


def _disc(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2).astype(np.float32)


@pytest.mark.parametrize("source", [(100, 80), (60, 200), (64, 64)])
def test_mask_round_trip_lands_on_the_source_pixels(source: tuple[int, int]) -> None:
    mask = _disc(source, (source[0] * 0.4, source[1] * 0.6), min(source) / 5)
    box = Letterbox(source, (256, 256))
    tensor = torch.from_numpy(mask)[None, None]
    there = box.forward(tensor, mode="nearest-exact")
    assert tuple(there.shape[-2:]) == (256, 256)
    back = box.inverse(there, mode="nearest-exact")[0, 0].numpy()
    np.testing.assert_array_equal(back, mask)


def test_soft_probabilities_round_trip_after_downsampling() -> None:
    source = (600, 500)
    mask = _disc(source, (300, 220), 80)
    box = Letterbox(source, (128, 128))
    back = box.inverse(box.forward(torch.from_numpy(mask)[None, None]))[0, 0].numpy() >= 0.5
    dice = 2 * (back & (mask > 0)).sum() / (back.sum() + mask.sum())
    assert dice > 0.98


def test_letterbox_keeps_aspect_ratio_and_centres() -> None:
    box = Letterbox((100, 200), (128, 128))
    assert box.resized_shape == (64, 128) and box.pad == (32, 0)
    out = box.forward(torch.ones(1, 1, 100, 200))
    assert out[0, 0, :32].sum() == 0 and out[0, 0, 32:96].min() == 1


def test_boxes_round_trip() -> None:
    box = Letterbox((300, 500), (640, 640))
    source_boxes = np.array([[10.0, 20.0, 110.0, 220.0], [400.0, 0.0, 500.0, 300.0]])
    model_boxes = box.boxes_to_model(source_boxes)
    assert model_boxes[:, [1, 3]].min() >= box.pad[0]  # inside the image part, not the padding
    np.testing.assert_allclose(box.boxes_to_source(model_boxes), source_boxes, atol=1e-9)


def test_volume_resampling_shape_and_inverse() -> None:
    resampling = VolumeResampling((20, 64, 64), (3.0, 0.7, 0.7), (1.5, 1.4, 1.4))
    assert resampling.target_shape == (40, 32, 32)
    volume = torch.zeros(1, 1, 20, 64, 64)
    volume[..., 5:15, 16:48, 16:48] = 1
    back = resampling.inverse(resampling.forward(volume))
    assert tuple(back.shape) == (1, 1, 20, 64, 64)
    assert ((back >= 0.5) == (volume >= 0.5)).float().mean() > 0.99


def test_orientation_labels() -> None:
    assert orientation_label((1, 0, 0, 0, 1, 0)) == "AXIAL"
    assert orientation_label((1, 0, 0, 0, 0, -1)) == "CORONAL"
    assert orientation_label((0, 1, 0, 0, 0, -1)) == "SAGITTAL"
    assert orientation_label((1, 0, 0, 0, 0.984755, 0.173861)) == "AXIAL"  # a 10 degree tilt
    assert orientation_label((1, 0, 0, 0, 0.7071, 0.7071)) == "OBLIQUE"


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((100, 1, 64, 64), (512, 512)),  # a CT's probabilities back to 512²
        ((3, 2, 30, 17), (100, 61)),  # two labels, odd sizes
        ((1, 1, 5, 5), (3, 2)),  # down-sampling
    ],
)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_bilinear_resize_is_f_interpolate_bit_for_bit(
    shape: tuple[int, int, int, int], size: tuple[int, int], layout: str
) -> None:
    """The way back to the source resolution (into numpy-allocated memory on the CPU) gives
    F.interpolate's values exactly, whatever the input's memory layout."""
    images = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    if layout == "transposed":
        images = images.transpose(2, 3)
    expected = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    resized = resize_bilinear(images, size)
    assert resized.dtype == torch.float32 and resized.shape == expected.shape
    assert torch.equal(resized, expected)
