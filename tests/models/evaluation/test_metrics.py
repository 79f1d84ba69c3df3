"""Metric definitions against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.evaluation.metrics import (
    MAX_DETECTIONS,
    auroc,
    classification_scores,
    detection_scores,
    dice_iou,
)


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


def test_map_second_detection_takes_the_free_truth() -> None:
    """COCO matching: a detection whose best truth is taken matches another free one.

    The top detection takes T1; the second overlaps T1 best (IoU 0.96) but T1 is taken, and T2
    is free at IoU 9.2/10.8 = 0.85, so it is a true positive for thresholds 0.50..0.85 (AP 1.0)
    and a false positive at 0.90 and 0.95 (recall 0.5 at precision 1: 51/101 = 0.505).
    Our former matching scored it a false positive everywhere (0.505 / 0.505).
    """
    truths = [[(0, 0, 10, 10), (1, 0, 11, 10)]]
    dets = [[((0, 0, 10, 10), 0.9), ((0.2, 0, 10.2, 10), 0.8)]]
    result = detection_scores(dets, truths)
    assert result["map50"] == 1.0
    assert result["map50_95"] == round((8 * 1.0 + 2 * 0.505) / 10, 4)


def test_map_hand_cases() -> None:
    truth = [[(0, 0, 10, 10)]]
    # IoU 62/100: a match at thresholds 0.50, 0.55, 0.60 only -> 3 of 10
    partial = detection_scores([[((0, 0, 10, 6.2), 0.7)]], truth)
    assert (partial["map50"], partial["map50_95"]) == (1.0, 0.3)
    # a false positive ranked above the true positive: precision 1/2 at every recall
    ranked = detection_scores([[((50, 50, 60, 60), 0.9), ((0, 0, 10, 10), 0.8)]], truth)
    assert ranked["map50"] == 0.5
    # a lower-scored duplicate of a matched detection costs nothing once recall is complete
    duplicate = detection_scores([[((0, 0, 10, 10), 0.9), ((0, 0, 10, 10), 0.8)]], truth)
    assert duplicate["map50"] == 1.0
    # COCO keeps the best MAX_DETECTIONS per image: a true positive ranked below them is dropped
    flood = [((100 + i, 100, 101 + i, 101), 0.9) for i in range(MAX_DETECTIONS)]
    assert detection_scores([[*flood, ((0, 0, 10, 10), 0.5)]], truth)["map50"] == 0.0
    # an image without truth contributes its false positives to the others' precision
    two = detection_scores([[((0, 0, 10, 10), 0.8)], [((0, 0, 5, 5), 0.9)]], [truth[0], []])
    assert two["map50"] == 0.5 and two["lesions"] == 1


def test_map_undefined_without_truth_and_bad_input() -> None:
    assert math.isnan(detection_scores([[((0, 0, 1, 1), 0.5)]], [[]])["map50"])
    with pytest.raises(ValueError, match="1 detection lists for 2 images"):
        detection_scores([[]], [[], []])
