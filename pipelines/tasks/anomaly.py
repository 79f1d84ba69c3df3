"""Anomaly ensembles: each member's score and map per frame, back on the source geometry.

A member sees every frame prepared like any 2D model (its card's input size and intensity); its
map is mapped back through the same letterbox as segmentation probabilities, so map pixel
``(f, r, c)`` belongs to source frame ``f`` at row ``r``, column ``c``. The study's score is the
highest frame score. Several members are combined on scores divided by each one's calibrated
threshold, weighted like every ensemble (see :class:`pipelines.contract.AnomalyOutput`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipelines.contract import AnomalyOutput
from pipelines.errors import PipelineModelError
from pipelines.members import Member, MemberOutcome, run_per_device
from pipelines.preprocess.prepare import PreparedInputs
from pipelines.spec import AnomalyTask


@dataclass
class MemberAnomaly:
    frame_scores: np.ndarray  # (frames,)
    map: np.ndarray  # (frames, rows, cols) float32 on the source grid
    threshold: float
    percentile: float


def member_anomaly(member: Member, inputs: PreparedInputs, task: AnomalyTask) -> MemberAnomaly:
    card = member.model.card
    if card.input.dims != 2 or card.anomaly is None:
        raise PipelineModelError(f"anomaly member {member.name!r} is not a 2D anomaly model")
    prepared = inputs.for_2d(card.input)
    frames = prepared.batch.shape[0]
    rows, cols = inputs.series.shape
    scores = np.empty(frames, np.float64)
    out = np.empty((frames, rows, cols), np.float32)
    for start in range(0, frames, task.batch_size):
        batch = prepared.batch[start : start + task.batch_size, 0].numpy()
        part_scores, maps = member.model.anomaly_maps(batch)
        scores[start : start + len(part_scores)] = part_scores
        source = prepared.letterbox.inverse(torch.from_numpy(maps[:, None])).numpy()
        out[start : start + len(part_scores)] = source[:, 0]
    threshold = card.anomaly.threshold if task.threshold is None else task.threshold
    return MemberAnomaly(scores, out, float(threshold), float(card.anomaly.percentile))


def run_anomaly(
    task: AnomalyTask, members: list[Member], inputs: PreparedInputs
) -> tuple[AnomalyOutput, list[MemberOutcome[MemberAnomaly]]]:
    outcomes = run_per_device(members, lambda m: member_anomaly(m, inputs, task))
    if len(outcomes) == 1:
        only = outcomes[0].value
        frame_scores, threshold, normalised = only.frame_scores, only.threshold, False
        combined_map = only.map
    else:
        frame_scores = sum(
            o.member.weight * o.value.frame_scores / o.value.threshold for o in outcomes
        )  # type: ignore[assignment]
        combined_map = sum(o.member.weight * o.value.map / o.value.threshold for o in outcomes)  # type: ignore[assignment]
        threshold, normalised = 1.0, True
    member_scores = {o.member.name: float(o.value.frame_scores.max()) for o in outcomes}
    output = AnomalyOutput(
        score=float(np.max(frame_scores)),
        threshold=float(threshold),
        percentile=outcomes[0].value.percentile,
        frame_scores=tuple(float(s) for s in frame_scores),
        member_scores=member_scores,
        normalised=normalised,
        map=np.asarray(combined_map, np.float32) if task.map else None,
    )
    return output, outcomes
