"""2D model inputs: the batch and the detector images equal the computation they replaced."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from pipelines.preprocess.decode import DecodedSeries
from pipelines.preprocess.geometry import Letterbox
from pipelines.preprocess.intensity import channels_image
from pipelines.preprocess.prepare import prepare_2d
from pipelines.spec import PreprocessingSpec


def _series(values: np.ndarray) -> DecodedSeries:
    frames = values.shape[0]
    return DecodedSeries(
        series_instance_uid="1.2.3",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        modality="CR",
        values=values,
        rgb=None,
        photometric="MONOCHROME2",
        source_frames=(),
        file_windows=(None,) * frames,
        file_voi_display=None,
        pixel_spacing_mm=(0.2, 0.2),
        slice_spacing_mm=None,
        slice_thickness_mm=None,
        orientation=None,
        intensity_unit="",
    )


def _card_input(
    size: tuple[int, int], channels: int, mean: list[float], std: list[float]
) -> object:
    intensity = SimpleNamespace(
        mode="percentile",
        center=None,
        width=None,
        lower_percentile=0.5,
        upper_percentile=99.5,
        mean=mean,
        std=std,
    )
    return SimpleNamespace(spatial_size=list(size), channels=channels, intensity=intensity)


def _old_prepare(series: DecodedSeries, ci: Any) -> tuple[np.ndarray, np.ndarray]:
    """The batch and detector images as prepare_2d made them before (always padded, clipped
    and normalised with two temporaries)."""
    images = channels_image(
        series,
        ci.intensity,
        PreprocessingSpec(),
        int(ci.channels),
        True,
    )
    box = Letterbox(series.shape, tuple(ci.spatial_size))
    (rh, rw), (th, tw), (top, left) = box.resized_shape, box.target_shape, box.pad
    tensor = torch.from_numpy(images)
    if (rh, rw) != tuple(tensor.shape[-2:]):
        tensor = F.interpolate(tensor, size=(rh, rw), mode="bilinear", align_corners=False)
    unit = F.pad(tensor, (left, tw - rw - left, top, th - rh - top)).numpy()
    channels = unit.shape[1]
    mean, std = ci.intensity.mean, ci.intensity.std
    m = np.asarray(mean if len(mean) == channels else mean[:1] * channels, dtype=np.float32)
    s = np.asarray(std if len(std) == channels else std[:1] * channels, dtype=np.float32)
    batch = (unit - m.reshape(1, channels, 1, 1)) / s.reshape(1, channels, 1, 1)
    shown = unit[:, 0] if channels == 1 else unit.transpose(0, 2, 3, 1)
    return batch, np.clip(shown, 0.0, 1.0)


@pytest.mark.parametrize(
    ("shape", "size", "channels", "mean", "std"),
    [
        ((2, 512, 512), (256, 256), 1, [0.0], [1.0]),  # square: resized, nothing to pad
        ((1, 300, 200), (128, 128), 1, [0.5], [0.25]),  # letterboxed: padded columns
        ((3, 64, 64), (64, 64), 1, [0.1], [0.3]),  # model size already: neither
        ((1, 90, 120), (64, 64), 3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),  # ImageNet
    ],
)
def test_prepare_2d_equals_the_old_computation(
    shape: tuple[int, int, int],
    size: tuple[int, int],
    channels: int,
    mean: list[float],
    std: list[float],
) -> None:
    values = np.random.default_rng(3).integers(-1024, 3072, shape).astype(np.float32)
    series, card_input = _series(values), _card_input(size, channels, mean, std)
    old_batch, old_unit = _old_prepare(series, card_input)
    prepared = prepare_2d(series, card_input, PreprocessingSpec())
    assert prepared.batch.dtype == torch.float32
    np.testing.assert_array_equal(prepared.batch.numpy(), old_batch)
    np.testing.assert_array_equal(prepared.unit_images, old_unit)
    assert prepared.batch.shape == (shape[0], channels, *size)
