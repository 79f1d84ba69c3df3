"""Classification ensembles: class probabilities per member, weighted mean, decision threshold.

A 2D classifier on several frames (a volume's slices, or several radiographs of one series)
reports the frame most suspicious for the positive class (``volume_aggregation: max``) or the mean
over frames; 3D classifiers see the whole volume resized to their input size. A pipeline without
a classifier for its modality can derive the study-level decision from its segmentation ensemble
(``source: segmentation``, :func:`classify_from_segmentation`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from core.domain import CodedConcept
from pipelines.contract import ClassificationOutput, SegmentationOutput
from pipelines.ensemble import weighted_mean
from pipelines.errors import PipelineModelError
from pipelines.members import Member, MemberOutcome, member_forward, run_per_device, task_orders
from pipelines.preprocess.prepare import PreparedInputs
from pipelines.spec import ClassificationTask, PostprocessSpec

NORMAL = CodedConcept("17621005", "SCT", "Normal")
ABNORMAL = CodedConcept("263654008", "SCT", "Abnormal")


def aggregate_frames(probs: np.ndarray, positive_index: int, mode: str) -> np.ndarray:
    """(frames, K) → (K,): the frame with the highest positive probability, or the mean."""
    if mode == "mean":
        return probs.mean(axis=0)
    return probs[int(np.argmax(probs[:, positive_index]))]


def member_probabilities(
    member: Member, inputs: PreparedInputs, task: ClassificationTask, positive_index: int
) -> np.ndarray:
    card_input = member.model.card.input
    forward = member_forward(member)
    if card_input.dims == 2:
        prepared = inputs.for_2d(card_input)
        parts = [
            forward(prepared.batch[start : start + task.batch_size]).numpy()
            for start in range(0, prepared.batch.shape[0], task.batch_size)
        ]
        return aggregate_frames(np.concatenate(parts), positive_index, task.volume_aggregation)
    volume = inputs.for_3d(card_input).volume
    size = tuple(int(s) for s in card_input.spatial_size)
    with torch.inference_mode():
        resized = F.interpolate(volume, size=size, mode="trilinear", align_corners=False)
    return forward(resized).numpy()[0]


def run_classification(
    task: ClassificationTask, members: list[Member], inputs: PreparedInputs
) -> tuple[ClassificationOutput, list[MemberOutcome[np.ndarray]]]:
    classes, orders = task_orders(members, lambda m: list(m.model.card.class_names))
    if task.positive_class not in classes:
        raise PipelineModelError(
            f"positive_class {task.positive_class!r} is not one of the models' classes {classes}"
        )
    positive = classes.index(task.positive_class)

    def probabilities(member: Member) -> np.ndarray:
        order = orders[member.name]
        own_positive = order[positive]  # the positive class's index in this member's output
        return member_probabilities(member, inputs, task, own_positive)[order]

    outcomes = run_per_device(members, probabilities)
    mean = weighted_mean([o.value for o in outcomes], [o.member.weight for o in outcomes])
    codes = tuple(
        label.type.to_domain()
        for label in sorted(members[0].model.card.labels, key=lambda lab: lab.value)
    )
    output = ClassificationOutput(
        classes=classes,
        probabilities=tuple(float(p) for p in mean),
        threshold=task.threshold,
        positive_class=task.positive_class,
        member_probabilities={o.member.name: tuple(float(p) for p in o.value) for o in outcomes},
        class_codes=codes,
    )
    return output, outcomes


def segmentation_study_score(
    probabilities: np.ndarray, label_map: np.ndarray, thresholds: list[float]
) -> float:
    """p(abnormal) of a study from its segmentation ensemble: the highest label probability over
    the voxels post-processing kept as findings and the voxels below their label's threshold.

    Voxels above threshold that post-processing discarded (components under the minimum size, past
    ``max_components``) are left out, so a discarded speck cannot make a study "abnormal"; a study
    with no finding still gets a graded score (its most suspicious sub-threshold voxel), which the
    conclusion reports as "suspicious, no lesion segmented" when it reaches the decision threshold.
    """
    kept = label_map > 0
    score = 0.0
    for index, threshold in enumerate(thresholds):
        label = probabilities[index]
        counted = kept | (label < threshold)
        if counted.any():
            score = max(score, float(label[counted].max()))
    return score


def classify_from_segmentation(
    task: ClassificationTask, segmentation: SegmentationOutput, postprocess: PostprocessSpec
) -> ClassificationOutput:
    """The study-level decision of a ``source: segmentation`` classification task.

    Only finding labels count (anatomy is not abnormal). Where the probabilities were not kept
    (many labels on a large volume), the heat map — each voxel's highest label probability —
    stands in for them, against the lowest label threshold.
    """
    thresholds = [
        postprocess.label_thresholds.get(lab.name, postprocess.threshold)
        for lab in segmentation.labels
    ]
    findings = [i for i, lab in enumerate(segmentation.labels) if not lab.is_anatomy]
    if segmentation.probabilities is not None:
        probabilities = segmentation.probabilities[findings]
        label_map = np.isin(
            segmentation.label_map, [segmentation.labels[i].value for i in findings]
        )
        score = segmentation_study_score(
            probabilities, label_map, [thresholds[i] for i in findings]
        )
    elif segmentation.heat is not None and findings:
        score = segmentation_study_score(
            segmentation.heat[None], segmentation.label_map, [min(thresholds)]
        )
    else:  # nothing but anatomy was segmented
        score = 0.0
    return ClassificationOutput(
        classes=("normal", "abnormal"),
        probabilities=(1.0 - score, score),
        threshold=task.threshold,
        positive_class="abnormal",
        class_codes=(NORMAL, ABNORMAL),
        source="segmentation",
    )
