"""Metric definitions against hand-computed values."""

from __future__ import annotations

import numpy as np

from models.evaluation.metrics import auroc, classification_scores, detection_scores, dice_iou


def test_dice_iou() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b[:2, :1] = True  # 2 pixels, inside a
    assert dice_iou(a, b) == (2 * 2 / 6, 2 / 4)
    assert dice_iou(np.zeros(3), np.zeros(3)) == (1.0, 1.0)


def test_auroc_and_threshold_scores() -> None:
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.6])
    labels = np.array([1, 1, 0, 0, 0])
    assert auroc(scores, labels) == 1.0
    assert auroc(1 - scores, labels) == 0.0
    result = classification_scores(scores, labels, threshold=0.5)
    assert (result["sensitivity"], result["specificity"]) == (1.0, round(2 / 3, 4))
    assert result["f1"] == round(2 * 2 / (2 * 2 + 1), 4)


def test_map_perfect_and_shifted() -> None:
    truths = [[(10, 10, 20, 20)], [(0, 0, 8, 8), (30, 30, 40, 40)]]
    perfect = [[(t, 0.9) for t in image] for image in truths]
    assert detection_scores(perfect, truths)["map50"] == 1.0
    assert detection_scores(perfect, truths)["map50_95"] == 1.0
    shifted = [[((x0 + 2, y0, x1 + 2, y1), 0.9) for x0, y0, x1, y1 in image] for image in truths]
    result = detection_scores(shifted, truths)
    assert result["map50"] == 1.0 and result["map50_95"] < 1.0
    assert detection_scores([[], []], truths)["map50"] == 0.0
