"""Device placement: CPU fallback with a warning that says where the model really ran."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.devices import resolve_device
from models.registry import ModelRegistry
from tests.models.helpers import make_card, tiny_unet_weights

NO_CUDA = not torch.cuda.is_available()


def test_cpu_is_cpu_without_warning() -> None:
    placement = resolve_device("cpu")
    assert (placement.used, placement.warning) == ("cpu", None)


def test_auto_picks_what_exists() -> None:
    placement = resolve_device("auto")
    assert placement.used == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert placement.warning is None


@pytest.mark.skipif(not NO_CUDA, reason="fallback is tested on a machine without CUDA")
def test_unavailable_cuda_falls_back_to_cpu_with_warning(tmp_path: Path) -> None:
    make_card(tmp_path, "seg", tiny_unet_weights(tmp_path / "seg" / "model.pt"))
    model = ModelRegistry(tmp_path).get("seg", "cuda:1")
    assert model.placement.requested == "cuda:1"
    assert model.placement.used == "cpu"
    assert (
        model.placement.warning
        and "cuda:1" in model.placement.warning
        and "cpu" in model.placement.warning
    )
    out = model.forward(torch.rand(1, 1, 32, 32))
    assert out.device.type == "cpu"


def test_garbage_device_name_falls_back_with_explanation() -> None:
    placement = resolve_device("tpu:7")
    assert placement.used == "cpu"
    assert placement.warning and "tpu:7" in placement.warning


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_two_models_on_cuda0_and_cpu(tmp_path: Path) -> None:
    make_card(tmp_path, "a", tiny_unet_weights(tmp_path / "a" / "model.pt", seed=0))
    make_card(tmp_path, "b", tiny_unet_weights(tmp_path / "b" / "model.pt", seed=1))
    registry = ModelRegistry(tmp_path)
    on_gpu, on_cpu = registry.get("a", "cuda:0"), registry.get("b", "cpu")
    assert on_gpu.placement.used == "cuda:0" and on_gpu.placement.warning is None
    assert next(on_gpu.network.parameters()).device.type == "cuda"  # type: ignore[union-attr]
    assert next(on_cpu.network.parameters()).device.type == "cpu"  # type: ignore[union-attr]
    x = torch.rand(2, 1, 32, 32)
    for model in (on_gpu, on_cpu):
        probs = model.forward(x)
        assert probs.device.type == "cpu"
        assert torch.allclose(probs.sum(1), torch.ones(2, 32, 32), atol=1e-4)


@pytest.mark.parametrize("requested", ["mps", "mps:0", "MPS"])
def test_mps_is_a_known_device_with_the_same_fallback_as_cuda(requested: str) -> None:
    placement = resolve_device(requested)
    if torch.backends.mps.is_available():  # Apple silicon
        assert placement.used == "mps" and placement.warning is None
    else:
        assert placement.used == "cpu"
        assert placement.warning is not None and "MPS is not available" in placement.warning
        assert "unknown device" not in placement.warning


def test_a_second_mps_device_does_not_exist() -> None:
    placement = resolve_device("mps:1")
    assert placement.used == "cpu" and "mps has one device" in (placement.warning or "")
