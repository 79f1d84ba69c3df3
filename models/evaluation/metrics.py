"""Metrics with their definitions written next to them, so card numbers are auditable.

Segmentation: Dice and IoU pooled over all pixels of a set ("micro"), and the mean per case over
cases with lesion in truth or prediction. Classification: AUROC (Mann-Whitney), and sensitivity,
specificity, F1 at a threshold. Detection: COCO AP (101-point interpolation) at IoU 0.50 and averaged
over 0.50:0.05:0.95, single class, computed by MONAI's ``COCOMetric`` and ``matching_batch`` (the
field's COCO implementation) rather than a matching of our own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data import box_utils

BoxT = Sequence[float]  # x0, y0, x1, y1 (+ anything)
MAX_DETECTIONS = 100  # per image, COCO's default maxDets


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


def detection_scores(
    detections: Sequence[Sequence[tuple[BoxT, float]]], truths: Sequence[Sequence[BoxT]]
) -> dict[str, float]:
    """COCO AP of one class at IoU 0.50 and averaged over 0.50:0.05:0.95, by MONAI's COCOMetric.

    ``detections[i]`` are (box, score) pairs for image i, ``truths[i]`` its boxes (x0, y0, x1, y1;
    anything after the fourth value is ignored). Matching is COCO's (MONAI's port of
    pycocotools via nnDetection): detections in descending score take the best *still free* truth
    with IoU >= threshold, at most 100 detections per image, 101-point interpolated precision.
    No truth at all gives NaN (AP is undefined), not MONAI's -1 placeholder.
    """
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection lists for {len(truths)} images")
    lesions = sum(len(t) for t in truths)
    if lesions == 0:
        return {"map50": float("nan"), "map50_95": float("nan"), "cases": len(truths), "lesions": 0}
    metric = COCOMetric(
        classes=["lesion"],
        iou_list=(0.5,),
        iou_range=(0.5, 0.95, 0.05),
        max_detection=(MAX_DETECTIONS,),
        per_class=False,
        verbose=False,
    )
    matches = matching_batch(
        iou_fn=_iou,
        iou_thresholds=metric.get_iou_thresholds(),
        pred_boxes=[_boxes([box for box, _ in dets]) for dets in detections],
        pred_classes=[np.zeros(len(dets), int) for dets in detections],
        pred_scores=[np.asarray([score for _, score in dets], float) for dets in detections],
        gt_boxes=[_boxes(image) for image in truths],
        gt_classes=[np.zeros(len(image), int) for image in truths],
        max_detections=MAX_DETECTIONS,
    )
    values, _ = metric(matches)
    return {
        "map50": round(values[f"AP_IoU_0.50_MaxDet_{MAX_DETECTIONS}"], 4),
        "map50_95": round(values[f"mAP_IoU_0.50_0.95_0.05_MaxDet_{MAX_DETECTIONS}"], 4),
        "cases": len(truths),
        "lesions": lesions,
    }


def _boxes(boxes: Sequence[BoxT]) -> np.ndarray:
    """(N, 4) float array of corner boxes, the layout MONAI's 2D ``box_iou`` expects."""
    return np.asarray([tuple(b[:4]) for b in boxes], float).reshape(-1, 4)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MONAI's pairwise box IoU (corner mode, 2D from the box width), kept a NumPy array."""
    return np.asarray(box_utils.box_iou(a, b))
