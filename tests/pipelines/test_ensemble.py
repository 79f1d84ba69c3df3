from __future__ import annotations

import numpy as np
import pytest

from pipelines.ensemble import box_iou, weighted_boxes_fusion, weighted_mean


def test_weighted_mean_normalises_weights() -> None:
    a, b = np.full((2, 3), 0.2, np.float32), np.full((2, 3), 0.8, np.float32)
    assert np.allclose(weighted_mean([a, b], [1, 3]), 0.65)
    assert np.allclose(weighted_mean([a, b], [0.25, 0.75]), 0.65)
    probs = weighted_mean(
        [np.array([0.9, 0.1]), np.array([0.3, 0.7]), np.array([0.5, 0.5])], [0.42, 0.26, 0.32]
    )
    assert probs.sum() == pytest.approx(1.0)
    assert probs[0] == pytest.approx(0.42 * 0.9 + 0.26 * 0.3 + 0.32 * 0.5)


@pytest.mark.parametrize("weights", [[0, 0], [-1, 2], [1]])
def test_weighted_mean_rejects_bad_weights(weights: list[float]) -> None:
    with pytest.raises(ValueError):
        weighted_mean([np.zeros(2), np.zeros(2)], weights)


def test_weighted_mean_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        weighted_mean([np.zeros(2), np.zeros(3)], [1, 1])


def test_wbf_fuses_overlapping_boxes_by_score_weight() -> None:
    m1 = [(10.0, 10.0, 50.0, 50.0, 0, 0.9)]
    m2 = [(14.0, 14.0, 54.0, 54.0, 0, 0.6)]
    fused = weighted_boxes_fusion([m1, m2], [3, 1], iou_thr=0.55)
    assert len(fused) == 1
    box = fused[0]
    w1, w2 = 0.9 * 0.75, 0.6 * 0.25
    expected_x0 = (10 * w1 + 14 * w2) / (w1 + w2)
    assert box.x0 == pytest.approx(expected_x0)
    assert box.score == pytest.approx(0.75 * 0.9 + 0.25 * 0.6)
    assert box.member_scores == {0: 0.9, 1: 0.6}


def test_wbf_keeps_separate_classes_and_far_boxes_apart_and_downweights_lonely_ones() -> None:
    m1 = [(0.0, 0.0, 10.0, 10.0, 0, 0.8), (100.0, 100.0, 120.0, 120.0, 0, 0.9)]
    m2 = [(0.0, 0.0, 10.0, 10.0, 1, 0.8)]
    fused = weighted_boxes_fusion([m1, m2], [1, 1])
    assert len(fused) == 3
    lonely = [f for f in fused if f.x0 == 100.0][0]
    assert lonely.score == pytest.approx(0.45)  # only one of two equal members found it


def test_wbf_skip_threshold_and_empty_input() -> None:
    assert weighted_boxes_fusion([[], []], [1, 1]) == []
    low = [(0.0, 0.0, 10.0, 10.0, 0, 0.01)]
    assert weighted_boxes_fusion([low], [1], skip_thr=0.05) == []


def test_box_iou() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
