"""Detection ensembles: each member's boxes mapped to source pixels, fused per frame by WBF."""

from __future__ import annotations

import numpy as np

from pipelines.contract import DetectionBox
from pipelines.ensemble import Box, weighted_boxes_fusion
from pipelines.errors import PipelineModelError
from pipelines.members import Member, MemberOutcome, run_per_device, same_labels
from pipelines.preprocess.prepare import PreparedInputs
from pipelines.spec import DetectionTask

FramesBoxes = list[list[Box]]  # per frame, boxes in source pixels


def member_boxes(member: Member, inputs: PreparedInputs, task: DetectionTask) -> FramesBoxes:
    card_input = member.model.card.input
    if card_input.dims != 2:
        raise PipelineModelError(f"detector {member.name}: only 2D detectors are supported")
    prepared = inputs.for_2d(card_input)
    conf = max(task.skip_threshold, 1e-3)
    out: FramesBoxes = []
    for start in range(0, len(prepared.unit_images), task.batch_size):
        batch = prepared.unit_images[start : start + task.batch_size]
        for raw in member.model.detect(np.ascontiguousarray(batch), conf):
            if not raw:
                out.append([])
                continue
            arr = np.asarray(raw, dtype=np.float64)
            corners = prepared.letterbox.boxes_to_source(arr[:, :4])
            out.append(
                [
                    (*(float(v) for v in c), int(b[4]), float(b[5]))  # type: ignore[misc]
                    for c, b in zip(corners, arr, strict=True)
                ]
            )
    return out


def run_detection(
    task: DetectionTask, members: list[Member], inputs: PreparedInputs
) -> tuple[tuple[DetectionBox, ...], list[MemberOutcome[FramesBoxes]]]:
    labels, orders = same_labels(members)

    def boxes(member: Member) -> FramesBoxes:
        # class indices into the task's labels: a member's own index i is the task's order.index(i)
        to_task = {own: task_index for task_index, own in enumerate(orders[member.name])}
        return [
            [(*b[:4], to_task.get(int(b[4]), int(b[4]) + len(to_task)), b[5]) for b in frame]
            for frame in member_boxes(member, inputs, task)
        ]

    outcomes = run_per_device(members, boxes)
    weights = [o.member.weight for o in outcomes]
    fused_boxes: list[DetectionBox] = []
    for frame in range(inputs.series.frame_count):
        per_member = [o.value[frame] for o in outcomes]
        for fused in weighted_boxes_fusion(
            per_member, weights, iou_thr=task.iou_threshold, skip_thr=task.skip_threshold
        ):
            if fused.score < task.score_threshold:
                continue
            if not 0 <= fused.class_index < len(labels):
                raise PipelineModelError(
                    f"detector returned class {fused.class_index}; its card has {len(labels)} label(s)"
                )
            fused_boxes.append(
                DetectionBox(
                    frame_index=frame,
                    x0=fused.x0,
                    y0=fused.y0,
                    x1=fused.x1,
                    y1=fused.y1,
                    label=labels[fused.class_index],
                    score=fused.score,
                    member_scores={
                        outcomes[m].member.name: s for m, s in fused.member_scores.items()
                    },
                )
            )
    return tuple(fused_boxes), outcomes
