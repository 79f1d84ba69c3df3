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
