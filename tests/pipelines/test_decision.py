"""The classification decision: the positive class is decided by its own probability and threshold."""

from __future__ import annotations

import pytest

from pipelines.contract import ClassificationOutput


def _output(probabilities: tuple[float, ...], threshold: float = 0.449) -> ClassificationOutput:
    return ClassificationOutput(
        classes=("normal", "benign", "abnormal"),
        probabilities=probabilities,
        threshold=threshold,
        positive_class="abnormal",
    )


def test_positive_class_below_its_threshold_is_not_the_decision_even_as_arg_max() -> None:
    output = _output((0.30, 0.26, 0.44))
    assert output.top_class == "abnormal"
    assert output.decision == "normal"  # the most probable of the others


def test_positive_class_at_its_threshold_is_the_decision_even_when_not_arg_max() -> None:
    assert _output((0.10, 0.45, 0.45), threshold=0.45).decision == "abnormal"
    assert _output((0.50, 0.05, 0.45), threshold=0.40).decision == "abnormal"


@pytest.mark.parametrize(
    "probabilities, decision",
    [((0.2, 0.5, 0.3), "benign"), ((0.6, 0.1, 0.3), "normal"), ((0.1, 0.1, 0.8), "abnormal")],
)
def test_three_classes(probabilities: tuple[float, ...], decision: str) -> None:
    assert _output(probabilities).decision == decision


def test_two_classes_below_threshold_give_the_other_class() -> None:
    two = ClassificationOutput(("normal", "abnormal"), (0.55, 0.45), 0.5, "abnormal")
    assert two.decision == "normal"


def test_study_score_from_segmentation_ignores_discarded_specks() -> None:
    """``source: segmentation``: kept findings and sub-threshold voxels count, discarded ones not."""
    import numpy as np

    from pipelines.tasks.classification import segmentation_study_score

    probabilities = np.full((1, 4, 8, 8), 0.1, np.float32)
    probabilities[0, 0, 0, 0] = 0.95  # a speck post-processing discarded (not in the label map)
    probabilities[0, 1, 1, 1] = 0.40  # the most suspicious sub-threshold voxel
    label_map = np.zeros((4, 8, 8), np.uint8)
    assert segmentation_study_score(probabilities, label_map, [0.5]) == pytest.approx(0.40)
    probabilities[0, 2, 2:5, 2:5] = 0.8  # a kept finding
    label_map[2, 2:5, 2:5] = 1
    assert segmentation_study_score(probabilities, label_map, [0.5]) == pytest.approx(0.8)


def test_conclusion_words_a_segmentation_derived_decision_as_a_lesion_score() -> None:
    from pipelines.contract import PipelineResult

    derived = ClassificationOutput(
        ("normal", "abnormal"), (0.6, 0.4), 0.5, "abnormal", source="segmentation"
    )
    result = PipelineResult(
        pipeline_name="p",
        pipeline_version="1",
        study_instance_uid="1.2",
        series_instance_uid="1.2.3",
        modality="CT",
        source_frames=(),
        pixel_spacing_mm=None,
        slice_thickness_mm=None,
        model_runs=(),
        classification=derived,
    )
    assert result.conclusion() == "lesion score: normal (abnormal 0.40)"
