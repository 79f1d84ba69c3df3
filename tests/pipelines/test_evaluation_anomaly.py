"""``pacsnode evaluate --only anomaly`` reproduces the AUROCs the committed demo cards record,
and PaDiM beats HOG + Isolation Forest on the held-out phantoms."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.cli import main
from models.card import read_card

DEMO_MODELS = Path(__file__).resolve().parents[2] / "models" / "cards"
ANOMALY_CARDS = ("demo-anomaly-hog", "demo-anomaly-padim")

pytestmark = pytest.mark.slow


def test_evaluate_reproduces_the_cards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ANOMALY_CARDS:  # a copy: --write-cards must not touch the committed cards
        shutil.copytree(DEMO_MODELS / name, tmp_path / name)
    monkeypatch.setenv("PACSNODE_MODELS_DIR", str(tmp_path))
    assert main(["evaluate", "--only", "anomaly", "--write-cards"]) == 0
    out = capsys.readouterr().out
    assert "auroc: PaDiM beats HOG + Isolation Forest" in out
    for name in ANOMALY_CARDS:
        committed = read_card(DEMO_MODELS / name / "card.yaml").metrics
        rewritten = read_card(tmp_path / name / "card.yaml").metrics
        assert rewritten["heldout_phantoms_2d"] == committed["heldout_phantoms_2d"], name
        assert f"{name}" in out and f"auroc={committed['heldout_phantoms_2d']['auroc']}" in out
    padim = read_card(DEMO_MODELS / "demo-anomaly-padim" / "card.yaml").metrics
    comparison = padim["comparison_heldout_phantoms_2d"]
    assert comparison["deep_beats_hog_iforest"] is True
    assert comparison["auroc_by_model"]["demo-anomaly-padim"] >= 0.95
