"""The finding map, the study conclusion rule and readable locations (issue 17)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

from core.domain import CodedConcept, Severity
from pipelines.contract import (
    ClassificationOutput,
    LabelSpec,
    PipelineResult,
    SegmentationOutput,
    SourceFrame,
)
from pipelines.findings import FindingContext, segment_findings_and_map
from pipelines.spec import SeverityRules

LESION = LabelSpec(
    1, "lesion", CodedConcept("49755003", "SCT", "M"), CodedConcept("52988006", "SCT", "Lesion")
)


def _result(label_map: np.ndarray, probability: float | None) -> PipelineResult:
    ctx = FindingContext(
        "1.2.3", "demo", "1", label_map.astype(np.float32), (1.0, 1.0), 2.0, True, "HU",
        SeverityRules(),
    )  # fmt: skip
    findings, finding_map = segment_findings_and_map(ctx, label_map, (LESION,))
    frames = tuple(
        SourceFrame("1.2", f"1.2.{i}", "1.3", instance_number=30 - i, series_number=4,
                    position_mm=2.0 * i)
        for i in range(label_map.shape[0])
    )  # fmt: skip
    cls = None
    if probability is not None:
        cls = ClassificationOutput(("normal", "abnormal"), (1 - probability, probability), 0.5,
                                   "abnormal")  # fmt: skip
    return PipelineResult(
        "demo", "1", "1.2.3", "1.3", "CT", frames, (1.0, 1.0), 2.0, (),
        segmentation=SegmentationOutput((LESION,), label_map, finding_map=finding_map),
        classification=cls, findings=tuple(findings),
    )  # fmt: skip


def _two_lesions() -> np.ndarray:
    label_map = np.zeros((5, 20, 20), np.uint8)
    label_map[1:4, 2:6, 2:6] = 1
    label_map[2, 6:8, 2:6] = 1  # the first lesion's largest cross-section is on frame 2
    label_map[2, 12:18, 12:15] = 1
    label_map[1, 14:15, 13:14] = 1  # joins the second lesion on the slice below (26-connected)
    return label_map


def test_finding_map_holds_each_component_under_its_own_number() -> None:
    label_map = _two_lesions()
    result = _result(label_map, None)
    seg = result.segmentation
    assert seg is not None and seg.finding_map is not None
    components, count = ndimage.label(label_map, np.ones((3, 3, 3), bool))
    assert count == len(result.findings) == 2
    for finding in result.findings:
        own = seg.finding_map == finding.component
        assert own.sum() == finding.measurements.pixel_count
        assert len(np.unique(components[own])) == 1  # exactly one component ...
        assert (components == components[own][0]).sum() == own.sum()  # ... all of it


def test_images_are_named_by_instance_number_and_key_slice_is_the_largest() -> None:
    result = _result(_two_lesions(), None)
    first, second = result.findings
    assert result.images_of(first) == "27-29"  # frames 1..3 are InstanceNumbers 29..27
    assert result.key_index_of(first) == 2
    assert result.key_image_of(first) == "image 28 (series 4, 4.0 mm)"
    assert result.images_of(second) == "28-29"
    assert result.key_image_of(second) == "image 28 (series 4, 4.0 mm)"


def test_conclusion_combines_classifier_and_findings_without_contradiction() -> None:
    empty = np.zeros((2, 8, 8), np.uint8)
    assert _result(empty, 0.78).conclusion() == (
        "classifier suspicious (abnormal 0.78), no lesion segmented"
    )
    assert _result(empty, 0.78).discordant
    assert _result(empty, 0.1).conclusion() == (
        "classifier not suspicious (abnormal 0.10), no lesion segmented"
    )
    assert not _result(empty, 0.1).discordant
    found = _result(_two_lesions(), 0.12)
    worst = max(f.severity for f in found.findings).meaning  # type: ignore[type-var]
    assert found.conclusion().startswith(f"2 findings (most severe: {worst}); classifier not")
    assert found.discordant
    no_classifier = replace(found, classification=None)
    assert no_classifier.conclusion() == f"2 findings (most severe: {worst})"
    assert _result(empty, None).conclusion() == "no lesion segmented"
    assert found.to_json_dict()["conclusion"] == found.summary()["conclusion"]


def test_severity_is_worded_mild_moderate_severe() -> None:
    assert [s.meaning for s in Severity] == ["Mild", "Moderate", "Severe"]
