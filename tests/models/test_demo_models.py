"""The shipped demo models: cards valid, weights verified and small, ensembles no worse than members."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.card import DEMO_DISCLAIMER, scan_cards
from models.evaluation import run as evaluation
from models.loaders import load_model, weights_digest
from models.registry import ModelRegistry
from models.training.demo_specs import DEMO_MODELS

CARDS_DIR = Path(__file__).resolve().parents[2] / "models" / "cards"
SHIPPED = {m.name for m in DEMO_MODELS}


def _require_cards() -> None:
    cards, _ = scan_cards(CARDS_DIR)
    missing = SHIPPED - set(cards)
    if missing:
        pytest.skip(f"demo weights not trained yet (run `pacsnode train`): missing {sorted(missing)}")


def test_shipped_cards_are_valid_and_verified() -> None:
    _require_cards()
    cards, errors = scan_cards(CARDS_DIR)
    assert errors == {}
    for name in SHIPPED:
        card = cards[name]
        assert card.disclaimer == DEMO_DISCLAIMER
        assert weights_digest(card.weights_path) == card.sha256
        if card.task != "classification":
            assert (card.labels[0].category.value, card.labels[0].type.value) == ("49755003", "52988006")
        else:
            assert card.class_names == ["normal", "abnormal"]
    uids = [cards[n].device_uid for n in SHIPPED]
    assert len(set(uids)) == len(uids)


def test_all_demo_weights_fit_in_25_mb() -> None:
    _require_cards()
    total = sum(p.stat().st_size for p in CARDS_DIR.rglob("*") if p.is_file())
    assert total <= 25 * 1024 * 1024, f"demo models take {total / 1e6:.1f} MB"


def test_every_shipped_model_loads_on_cpu() -> None:
    _require_cards()
    cards, _ = scan_cards(CARDS_DIR)
    for name in SHIPPED:
        assert load_model(cards[name], "cpu").placement.used == "cpu"


@pytest.mark.slow
@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_ensemble_scores_at_least_as_well_as_its_best_member(task: str) -> None:
    _require_cards()
    registry = ModelRegistry(CARDS_DIR)
    members = {n: registry.get(n, "cpu") for n, c in registry.cards.items() if c.task == task and n in SHIPPED}
    evaluate = evaluation.evaluate_segmentation if task == "segmentation" else evaluation.evaluate_classification
    scores = evaluate(members, 999)
    metric = evaluation.primary_metric(task)
    best = max(scores[n][metric] for n in members)
    assert scores["ensemble"][metric] >= best, scores
    assert best > (0.5 if task == "segmentation" else 0.8), scores  # useful on phantoms
