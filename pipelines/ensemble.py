"""Ensemble maths: weighted mean of probabilities and weighted boxes fusion (WBF).

Weights are normalised here, once, so a pipeline may write ``0.42/0.26/0.32`` or ``2/1/1`` and
mean the same thing. ``pacsnode evaluate`` (models) uses these functions for ensemble scores, so
what is evaluated is what runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

Box = tuple[float, float, float, float, int, float]  # x0, y0, x1, y1, class_index, score


def normalise_weights(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(
            f"ensemble weights must be non-negative with a positive sum, got {list(weights)}"
        )
    return w / w.sum()


def weighted_mean(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Σ wᵢ·arrayᵢ with normalised weights; arrays must share one shape. Result is float32."""
    if len(arrays) != len(weights):
        raise ValueError(f"{len(arrays)} arrays but {len(weights)} weights")
    w = normalise_weights(weights)
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members disagree on output shape: {sorted(shapes)}")
    out = np.zeros(arrays[0].shape, dtype=np.float32)
    for array, weight in zip(arrays, w, strict=True):
        out += np.float32(weight) * np.asarray(array, dtype=np.float32)
    return out


@dataclass
class FusedBox:
    """A WBF cluster: score-weighted mean corners, and the best score each member gave it."""

    x0: float
    y0: float
    x1: float
    y1: float
    class_index: int
    score: float
    member_scores: dict[int, float] = field(default_factory=dict)  # member index -> score


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def weighted_boxes_fusion(
    boxes_per_member: Sequence[Sequence[Box]],
    weights: Sequence[float],
    iou_thr: float = 0.55,
    skip_thr: float = 0.0,
) -> list[FusedBox]:
    """Weighted boxes fusion (Solovyev et al. 2021) over the members' boxes of one image.

    Boxes of a class are visited by descending ``score·weight``; each joins the fused box of the
    same class it overlaps most (IoU > ``iou_thr``) or starts a new one. A fused box's corners are
    the mean of its boxes' corners weighted by ``score·weight``; its score is
    ``Σ_members weight·(best score that member gave it)``: a box every member agrees on keeps its
    score, one that only a low-weight member found is down-weighted accordingly.
    """
    if len(boxes_per_member) != len(weights):
        raise ValueError(f"{len(boxes_per_member)} members but {len(weights)} weights")
    w = normalise_weights(weights)
    candidates: list[tuple[float, int, Box]] = []
    for member, boxes in enumerate(boxes_per_member):
        for box in boxes:
            if box[5] >= skip_thr and box[2] > box[0] and box[3] > box[1]:
                candidates.append((box[5] * w[member], member, box))
    candidates.sort(key=lambda c: -c[0])

    clusters: list[list[tuple[float, int, Box]]] = []
    fused: list[FusedBox] = []
    for weighted_score, member, box in candidates:
        best, best_iou = -1, iou_thr
        for index, current in enumerate(fused):
            if current.class_index != box[4]:
                continue
            iou = box_iou(box, (current.x0, current.y0, current.x1, current.y1))
            if iou > best_iou:
                best, best_iou = index, iou
        if best < 0:
            clusters.append([(weighted_score, member, box)])
            fused.append(FusedBox(*box[:4], class_index=int(box[4]), score=0.0))
            best = len(fused) - 1
        else:
            clusters[best].append((weighted_score, member, box))
        _refresh(fused[best], clusters[best], w)
    return sorted(fused, key=lambda f: -f.score)


def _refresh(target: FusedBox, cluster: list[tuple[float, int, Box]], w: np.ndarray) -> None:
    total = sum(c[0] for c in cluster) or 1.0
    coords = [sum(c[0] * c[2][k] for c in cluster) / total for k in range(4)]
    target.x0, target.y0, target.x1, target.y1 = (float(v) for v in coords)
    best_by_member: dict[int, float] = {}
    for _, member, box in cluster:
        best_by_member[member] = max(best_by_member.get(member, 0.0), float(box[5]))
    target.member_scores = best_by_member
    target.score = float(sum(w[m] * s for m, s in best_by_member.items()))
