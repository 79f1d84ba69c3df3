"""Anomaly models (HOG + Isolation Forest, PaDiM) behind ``LoadedModel.anomaly_maps``.

They run on the CPU: the Isolation Forest is scikit-learn, and PaDiM's cost is the per-position
Mahalanobis distance in NumPy, not its small backbone. The card's SHA-256 is checked before the
file is read (joblib unpickles; the npz is read without pickles).
"""

from __future__ import annotations

from models.anomaly.hog_iforest import HogIForest
from models.anomaly.padim import Padim
from models.card import ModelCard
from models.devices import DevicePlacement
from models.loaders import LoadedModel


def load_anomaly(card: ModelCard, placement: DevicePlacement, sha: str) -> LoadedModel:
    method: HogIForest | Padim = (
        HogIForest.load(card.weights_path)
        if card.framework == "sklearn"
        else Padim.load(card.weights_path)
    )
    if placement.used != "cpu":  # only an explicit accelerator request is worth a warning
        warning = None
        if placement.requested != "auto":
            warning = f"{card.name} ({card.framework}) runs on the CPU only"
        placement = DevicePlacement(requested=placement.requested, used="cpu", warning=warning)
    return LoadedModel(card, placement, sha, anomaly=method.score_maps)
