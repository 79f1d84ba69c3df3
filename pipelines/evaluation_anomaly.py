"""``pacsnode evaluate`` for anomaly models: AUROC on held-out phantoms with and without lesions.

The held-out sets use the evaluation seed (never a training or calibration seed): ``HELDOUT``
normal phantoms and ``HELDOUT`` phantoms with 1-3 lesions, normalised exactly as the cards say.
Each model is also scored at its card's calibrated threshold (sensitivity, specificity), and the
report says whether the deep-feature method (PaDiM) beats HOG + Isolation Forest, the method of
the platform the node replaces.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.evaluation.metrics import auroc
from models.loaders import LoadedModel
from models.training.anomaly import lesion_images, normal_images

HELDOUT = 100  # per class


def heldout_anomaly_set(seed: int, count: int = HELDOUT) -> tuple[np.ndarray, np.ndarray]:
    """(images (2*count, H, W), labels (0 normal, 1 with lesions)) for ``seed``."""
    normal = normal_images(seed + 11, count)
    abnormal = lesion_images(seed + 12, count)
    labels = np.r_[np.zeros(count, np.int64), np.ones(count, np.int64)]
    return np.concatenate([normal, abnormal]), labels


def evaluate_anomaly(models: dict[str, LoadedModel], seed: int) -> dict[str, dict[str, Any]]:
    """Per model: AUROC, and sensitivity/specificity at the card's calibrated threshold."""
    images, labels = heldout_anomaly_set(seed)
    results: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        scores, _maps = model.anomaly_maps(images)
        assert model.card.anomaly is not None  # the card validator requires it
        threshold = model.card.anomaly.threshold
        flagged = scores >= threshold
        results[name] = {
            "auroc": round(auroc(scores, labels), 4),
            "sensitivity": round(float(flagged[labels == 1].mean()), 4),
            "specificity": round(float((~flagged[labels == 0]).mean()), 4),
            "threshold": threshold,
            "framework": model.card.framework,
            "cases": len(labels),
        }
    return results


def comparison(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The best deep (padim) and classical (sklearn) AUROC, and whether deep beats classical."""
    best: dict[str, float] = {}
    for scores in results.values():
        framework = str(scores["framework"])
        best[framework] = max(best.get(framework, 0.0), float(scores["auroc"]))
    out: dict[str, Any] = {"auroc_by_model": {n: s["auroc"] for n, s in results.items()}}
    if "padim" in best and "sklearn" in best:
        out["deep_beats_hog_iforest"] = best["padim"] > best["sklearn"]
    return out


def format_anomaly(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["\nanomaly (trained on normal phantoms only; held-out normal vs with lesions):"]
    for name, scores in results.items():
        shown = ", ".join(f"{k}={v}" for k, v in scores.items() if k != "framework")
        lines.append(f"  {name:24} {shown}")
    verdict = comparison(results).get("deep_beats_hog_iforest")
    if verdict is not None:
        lines.append(
            "  auroc: PaDiM beats HOG + Isolation Forest"
            if verdict
            else "  auroc: PADIM DOES NOT BEAT HOG + ISOLATION FOREST"
        )
    return lines
