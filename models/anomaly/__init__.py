"""Unsupervised anomaly detection fitted on normal images only: HOG + Isolation Forest and PaDiM.

Both methods share one interface (:class:`AnomalyMethod`): ``fit`` on normal images, then
``score_maps`` gives per image an anomaly map at the input size (higher = more anomalous) whose
maximum is the image's anomaly score. Images are float32 ``(N, H, W)`` already normalised per the
model card's intensity spec. The weights are one file per method (joblib or npz) that the card's
SHA-256 pins, like every other model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class AnomalyMethod(Protocol):
    """What a fitted anomaly model offers the loader, the pipelines and the evaluation."""

    def score_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores (N,), maps (N, H, W) float32) for float32 images (N, H, W) at the input size."""
        ...

    def save(self, path: Path) -> None: ...


def calibrate_threshold(normal_scores: np.ndarray, percentile: float) -> float:
    """The decision threshold: the ``percentile`` of scores on held-out NORMAL images.

    At 95 about one normal image in twenty is flagged, whatever scale the method's scores use.
    """
    return float(np.percentile(np.asarray(normal_scores, dtype=np.float64), percentile))
