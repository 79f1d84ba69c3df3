"""The registry loads each model once per process and keeps it warm."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.card import ModelLoadError
from models.registry import ModelRegistry
from tests.models.helpers import make_card, tiny_unet_weights


def test_models_load_once_and_stay_warm(tmp_path: Path) -> None:
    make_card(tmp_path, "seg", tiny_unet_weights(tmp_path / "seg" / "model.pt"))
    registry = ModelRegistry(tmp_path, torch_threads=1)
    first = registry.get("seg", "cpu")
    assert registry.get("seg", "cpu") is first
    assert torch.get_num_threads() == 1
    assert [m.card.name for m in registry.loaded()] == ["seg"]


def test_unknown_model_names_the_known_ones(tmp_path: Path) -> None:
    make_card(tmp_path, "seg", tiny_unet_weights(tmp_path / "seg" / "model.pt"))
    with pytest.raises(ModelLoadError, match="known: seg"):
        ModelRegistry(tmp_path).card("nope")
