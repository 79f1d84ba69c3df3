"""Segmentation ensembles: per-member probabilities in source geometry, weighted mean, counts.

2D models run on every frame (batched slices for volumes); 3D models run by sliding-window
inference on the card's grid (its orientation and spacing: :mod:`pipelines.preprocess.orientation`).
Each member's probabilities are mapped back to the source grid and added, weighted, into one
accumulator, so memory holds one member's output at a time plus
the ensemble (not all members at once) — a 512x512x100 CT stays affordable.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipelines.contract import LabelSpec
from pipelines.errors import PipelineModelError
from pipelines.members import (
    Member,
    MemberOutcome,
    member_forward,
    run_per_device,
    same_labels,
)
from pipelines.preprocess.prepare import PreparedInputs
from pipelines.spec import SegmentationTask
from pipelines.tasks.bundle import bundle_probabilities
from pipelines.tasks.nnunet import nnunet_probabilities


@dataclass
class SegmentationRun:
    labels: tuple[LabelSpec, ...]
    probabilities: (
        np.ndarray
    )  # (L, F, H, W) ensemble mean of the labels (no background), source grid
    member_pixel_counts: dict[str, dict[str, int]]
    outcomes: list[MemberOutcome[dict[str, int]]]


def member_probabilities(
    member: Member, inputs: PreparedInputs, task: SegmentationTask
) -> np.ndarray:
    """One member's (L, F, H, W) label probabilities on the source grid.

    The background channel is dropped before the inverse mapping: nothing downstream needs it,
    and resampling it would double the most expensive step after inference.
    """
    bundle = getattr(member.model, "bundle", None)
    if bundle is not None:  # the bundle's own transforms and inferer, back on the source grid
        label_probs = bundle_probabilities(bundle, inputs.series)
        _check_channels(member, label_probs.shape[0] + 1)
        return label_probs
    predictor = getattr(member.model, "nnunet", None)
    if predictor is not None:  # nnU-Net's own pre-processing and inference, on the source grid
        label_probs = nnunet_probabilities(predictor, inputs.series)
        _check_channels(member, label_probs.shape[0] + 1)
        return label_probs
    card_input = member.model.card.input
    forward = member_forward(member)
    if card_input.dims == 2:
        prepared = inputs.for_2d(card_input)
        frames = prepared.batch.shape[0]
        rows, cols = inputs.series.shape
        out: np.ndarray | None = None
        for start in range(0, frames, task.batch_size):
            probs = forward(prepared.batch[start : start + task.batch_size])
            _check_channels(member, probs.shape[1])
            source = prepared.letterbox.inverse(probs[:, 1:]).numpy()  # (b, L, rows, cols)
            if out is None:
                out = np.empty((source.shape[1], frames, rows, cols), dtype=np.float32)
            out[:, start : start + source.shape[0]] = source.transpose(1, 0, 2, 3)
        assert out is not None
        return out
    from monai.inferers import sliding_window_inference

    prepared3 = inputs.for_3d(card_input)
    with torch.inference_mode():
        window_probs: Any = sliding_window_inference(
            prepared3.volume,
            roi_size=tuple(int(s) for s in card_input.spatial_size),
            sw_batch_size=task.sw_batch_size,
            predictor=forward,
            overlap=task.sw_overlap,
        )
    assert isinstance(window_probs, torch.Tensor)
    _check_channels(member, window_probs.shape[1])
    return prepared3.grid.to_source(window_probs[:, 1:].float().cpu())[0].numpy()


def _check_channels(member: Member, channels: int) -> None:
    labels = len(member.model.card.labels)
    if channels != labels + 1:
        raise PipelineModelError(
            f"model {member.name} returned {channels} channels, its card has {labels} label(s) "
            "+ background"
        )


def run_segmentation(
    task: SegmentationTask, members: list[Member], inputs: PreparedInputs
) -> SegmentationRun:
    labels, orders = same_labels(members)
    accumulator: list[np.ndarray] = []
    lock = threading.Lock()

    def work(member: Member) -> dict[str, int]:
        probs = member_probabilities(member, inputs, task)
        order = orders[member.name]
        if order != sorted(order):  # a label_map reordered this member's labels
            probs = probs[order]
        counts = {
            lab.name: int(np.count_nonzero(probs[i] >= task.postprocess.threshold_for(lab.name)))
            for i, lab in enumerate(labels)
        }
        if member.weight != 1.0:  # a lone member's normalised weight is 1: nothing to scale
            np.multiply(probs, np.float32(member.weight), out=probs)  # in place: no extra copy
        with lock:
            if accumulator:
                accumulator[0] += probs
            else:
                accumulator.append(probs)
        return counts

    outcomes = run_per_device(members, work)
    return SegmentationRun(
        labels=labels,
        probabilities=accumulator[0],
        member_pixel_counts={o.member.name: o.value for o in outcomes},
        outcomes=outcomes,
    )
