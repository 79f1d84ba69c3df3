"""``pacsnode evaluate`` for denoisers: the shipped cards' PSNR/SSIM are reproduced, the network
beats the noisy input, and ``pacsnode train --only enhancement`` writes loadable cards."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.cli import main
from models.registry import ModelRegistry
from pipelines.evaluation_enhancement import NOISY_INPUT, evaluate_enhancement

DEMO_MODELS = Path(__file__).resolve().parents[2] / "models" / "cards"
NAMES = ("demo-denoise-dncnn", "demo-denoise-nlm")


def test_card_metrics_are_reproduced() -> None:
    registry = ModelRegistry(DEMO_MODELS)
    cards = {name: registry.card(name) for name in NAMES}
    seed = cards[NAMES[0]].metrics["seed"]
    report = evaluate_enhancement({n: registry.get(n, "cpu") for n in NAMES}, seed)
    for name, card in cards.items():
        assert report[name] == card.metrics["heldout_noisy_phantoms_2d"], name
    comparison = cards[NAMES[0]].metrics["comparison_heldout_noisy_phantoms_2d"]
    assert report[NOISY_INPUT] == comparison[NOISY_INPUT]
    network, noisy = report["demo-denoise-dncnn"], report[NOISY_INPUT]
    assert network["psnr_db"] > noisy["psnr_db"] + 5 and network["ssim"] > noisy["ssim"]
    assert comparison["beats_noisy_input"] == {"demo-denoise-dncnn": True, "demo-denoise-nlm": True}


def test_train_only_enhancement_writes_loadable_cards(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["train", "--only", "enhancement", "--quick", "--out", str(tmp_path)]) == 0
    registry = ModelRegistry(tmp_path)
    assert set(registry.cards) == set(NAMES)
    image = np.random.default_rng(0).random((1, 32, 40), dtype=np.float32)
    for name in NAMES:
        assert registry.get(name, "cpu").denoise(image).shape == image.shape
