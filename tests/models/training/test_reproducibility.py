"""``pacsnode train --quick``: the same seed gives the same weights (same SHA-256, same Device UID)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.card import DEMO_DISCLAIMER, read_card
from models.loaders import load_model
from models.training.demo_specs import demo_model
from models.training.run import train_one


@pytest.mark.parametrize("name", ["demo-seg-unet", "demo-seg3d-unet", "demo-cls-resnet"])
def test_quick_training_is_reproducible(tmp_path: Path, name: str) -> None:
    model = demo_model(name)
    first = train_one(model, tmp_path / "a", seed=42, quick=True)
    second = train_one(model, tmp_path / "b", seed=42, quick=True)
    other = train_one(model, tmp_path / "c", seed=43, quick=True)
    assert first.sha256 == second.sha256
    assert first.device_uid == second.device_uid
    assert other.sha256 != first.sha256 and other.device_uid != first.device_uid
    card = read_card(tmp_path / "a" / name / "card.yaml")
    assert card.disclaimer == DEMO_DISCLAIMER and card.training["seed"] == 42
    assert load_model(card, "cpu").sha256 == first.sha256


@pytest.mark.slow
def test_quick_yolo_training_is_reproducible(tmp_path: Path) -> None:
    model = demo_model("demo-det-yolo")
    first = train_one(model, tmp_path / "a", seed=7, quick=True)
    second = train_one(model, tmp_path / "b", seed=7, quick=True)
    assert first.sha256 == second.sha256
    loaded = load_model(read_card(tmp_path / "a" / "demo-det-yolo" / "card.yaml"), "cpu")
    assert loaded.card.framework == "ultralytics"
