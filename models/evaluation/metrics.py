"""Plain NumPy metrics with the definitions written next to them, so card numbers are auditable.

Segmentation: Dice and IoU pooled over all pixels of a set ("micro"), and the mean per case over
cases with lesion in truth or prediction. Classification: AUROC (Mann-Whitney), and sensitivity,
specificity, F1 at a threshold. Detection: COCO-style AP (101-point interpolation) at IoU 0.50 and
averaged over 0.50:0.05:0.95, single class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BoxT = Sequence[float]  # x0, y0, x1, y1 (+ anything)


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two binary masks; both empty counts as perfect (1.0)."""
    p, t = pred.astype(bool), truth.astype(bool)
    inter = float(np.logical_and(p, t).sum())
    total = float(p.sum() + t.sum())
    union = float(np.logical_or(p, t).sum())
    if total == 0:
        return 1.0, 1.0
    return 2 * inter / total, inter / union


def segmentation_scores(
    preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]
) -> dict[str, float]:
    pooled = dice_iou(
        np.concatenate([p.ravel() for p in preds]), np.concatenate([t.ravel() for t in truths])
    )
    per_case = [dice_iou(p, t) for p, t in zip(preds, truths, strict=True) if p.any() or t.any()]
    return {
        "dice": round(pooled[0], 4),
        "iou": round(pooled[1], 4),
        "dice_mean_case": round(float(np.mean([d for d, _ in per_case])) if per_case else 1.0, 4),
        "iou_mean_case": round(float(np.mean([i for _, i in per_case])) if per_case else 1.0, 4),
        "cases": len(preds),
    }


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties count half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def classification_scores(
    scores: np.ndarray, labels: np.ndarray, threshold: float
) -> dict[str, float]:
    pred = scores >= threshold
    truth = labels == 1
    tp = int((pred & truth).sum())
    tn = int((~pred & ~truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {
        "auroc": round(auroc(scores, labels), 4),
        "f1": round(f1, 4),
        "sensitivity": round(sens, 4),
        "specificity": round(spec, 4),
        "accuracy": round((tp + tn) / len(labels), 4),
        "threshold": threshold,
        "cases": len(labels),
    }


def box_iou(a: BoxT, b: BoxT) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def average_precision(
    detections: Sequence[Sequence[tuple[BoxT, float]]],
    truths: Sequence[Sequence[BoxT]],
    iou_thr: float,
) -> float:
    """COCO 101-point AP for one class; ``detections[i]`` are (box, score) pairs for image i."""
    n_truth = sum(len(t) for t in truths)
    if n_truth == 0:
        return float("nan")
    flat = [(score, i, box) for i, dets in enumerate(detections) for box, score in dets]
    flat.sort(key=lambda item: -item[0])
    used = [np.zeros(len(t), bool) for t in truths]
    tp = np.zeros(len(flat))
    for k, (_, i, box) in enumerate(flat):
        ious = [box_iou(box, t) for t in truths[i]]
        if ious:
            j = int(np.argmax(ious))
            if ious[j] >= iou_thr and not used[i][j]:
                used[i][j] = True
                tp[k] = 1
    if not len(flat):
        return 0.0
    ctp = np.cumsum(tp)
    recall = ctp / n_truth
    precision = ctp / np.arange(1, len(flat) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone envelope
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, points, side="left")
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in idx]))


def detection_scores(
    detections: Sequence[Sequence[tuple[BoxT, float]]], truths: Sequence[Sequence[BoxT]]
) -> dict[str, float]:
    aps = [average_precision(detections, truths, thr) for thr in np.arange(0.5, 0.96, 0.05)]
    return {
        "map50": round(aps[0], 4),
        "map50_95": round(float(np.mean(aps)), 4),
        "cases": len(truths),
        "lesions": sum(len(t) for t in truths),
    }
