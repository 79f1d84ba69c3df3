"""The denoisers' building blocks: the unit-range map is exact both ways, the noise estimate is
right on pure Gaussian noise, non-local means removes noise, and cards pair task and framework."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.card import ModelCard
from models.enhance import NlmDenoiser, from_unit, noise_sigma, to_unit, unit_range
from models.registry import ModelRegistry

DEMO_MODELS = Path(__file__).resolve().parents[3] / "models" / "cards"


def test_unit_range_round_trips_hounsfield_units() -> None:
    hu = np.random.default_rng(0).normal(40, 300, (64, 64)).astype(np.float32) - 1000
    low, high = unit_range(hu)
    unit = to_unit(hu, low, high)
    assert unit.min() < 0.05 and unit.max() > 0.95  # no clipping: tails stay outside [0, 1]
    np.testing.assert_allclose(from_unit(unit, low, high), hu, atol=1e-3)


def test_noise_sigma_finds_gaussian_noise_on_a_smooth_image() -> None:
    rng = np.random.default_rng(1)
    smooth = np.add.outer(np.linspace(0, 100, 256), np.linspace(0, 50, 256))
    assert noise_sigma(smooth + rng.normal(0, 7.0, smooth.shape)) == pytest.approx(7.0, rel=0.05)


def test_non_local_means_lowers_the_noise() -> None:
    rng = np.random.default_rng(2)
    clean = np.zeros((96, 96), np.float32)
    clean[24:72, 24:72] = 1.0
    noisy = (clean + rng.normal(0, 0.1, clean.shape)).astype(np.float32)
    denoised = NlmDenoiser().denoise(noisy[None])[0]
    assert np.abs(denoised - clean).mean() < 0.5 * np.abs(noisy - clean).mean()


def test_card_pairs_task_enhancement_with_a_denoiser_framework() -> None:
    card = ModelRegistry(DEMO_MODELS).card("demo-denoise-nlm")
    data = card.model_dump(mode="json", exclude={"card_path"})
    with pytest.raises(ValueError, match="task enhancement|at least one label"):
        ModelCard.model_validate({**data, "task": "segmentation"})
    with pytest.raises(ValueError, match="task enhancement"):
        ModelCard.model_validate({**data, "framework": "monai"})


def test_tiled_network_pass_equals_a_whole_frame_pass() -> None:
    import torch

    from models.enhance import ResidualDenoiser, network_denoise

    torch.manual_seed(0)
    network = ResidualDenoiser(channels=8, depth=5).eval()
    images = np.random.default_rng(3).random((2, 100, 75), dtype=np.float32)
    whole = network_denoise(network, images, "cpu", tile=1000)
    tiled = network_denoise(network, images, "cpu", tile=32)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
