"""Anatomy labels in SEG, SR, PDF and the stored result: a segment and a volume, never a lesion.

The result is built with the pipeline's own finding and structure builders from a label map with
a lesion (a ``finding`` label) and the left and right kidney (``anatomy`` labels coded from the
shipped TotalSegmentator SNOMED CT map), so what is checked is what a 104-organ model produces.
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from core.domain import ArtifactKind
from models.label_codes import standard_label
from node.results.concepts import SEVERITY
from node.results.exports import findings_csv
from node.results.produce import OutputOptions, produce_results
from node.results.store import load_result, save_result
from pipelines.contract import LabelSpec, PipelineResult
from pipelines.findings import FindingContext, measure_structures, segment_findings_and_map
from pipelines.spec import SeverityRules
from tests.node.results.factories import LESION, make_result, synthetic_ct_series
from tests.node.results.test_report_text import _pdf_text

SEVERITY_CODE = SEVERITY.value  # the concept name of the node's severity evaluation


def _anatomy(value: int, name: str) -> LabelSpec:
    card = standard_label(name)
    assert card is not None and card.kind == "anatomy"
    return LabelSpec(
        value,
        name,
        card.category.to_domain(),
        card.type.to_domain(),
        (0, 128, 255),
        "anatomy",
        card.type_modifier.to_domain() if card.type_modifier else None,
    )


KIDNEY_LEFT = _anatomy(2, "kidney_left")
KIDNEY_RIGHT = _anatomy(3, "kidney_right")


def _result(sources: list, with_lesion: bool) -> PipelineResult:
    base = make_result(sources)
    frames, rows, cols = len(sources), int(sources[0].Rows), int(sources[0].Columns)
    label_map = np.zeros((frames, rows, cols), np.uint8)
    if with_lesion:
        label_map[1:3, 4:10, 4:10] = LESION.value
    label_map[:, 14:22, 2:10] = KIDNEY_LEFT.value  # two pieces: still one structure
    label_map[1, 14:22, 5] = 0
    label_map[0:3, 20:28, 20:30] = KIDNEY_RIGHT.value
    labels = (LESION, KIDNEY_LEFT, KIDNEY_RIGHT) if with_lesion else (KIDNEY_LEFT, KIDNEY_RIGHT)
    ctx = FindingContext(
        base.study_instance_uid,
        base.pipeline_name,
        base.pipeline_version,
        np.full(label_map.shape, 40.0, np.float32),
        (0.8, 0.8),
        2.5,
        True,
        "HU",
        SeverityRules(),
    )
    findings, finding_map = segment_findings_and_map(ctx, label_map, labels)
    structures = measure_structures(ctx, label_map, labels)
    assert base.segmentation is not None
    segmentation = replace(
        base.segmentation,
        labels=labels,
        label_map=label_map,
        probabilities=np.stack([(label_map == lab.value).astype(np.float32) for lab in labels]),
        finding_map=finding_map,
    )
    return replace(
        base,
        segmentation=segmentation,
        findings=tuple(findings),
        structures=tuple(structures),
        detections=(),
        classification=None,
        pipeline_name="organs",  # the factory's "demo-lesion" would put the word in the title
    )


def test_anatomy_labels_are_measured_structures_not_findings() -> None:
    result = _result(synthetic_ct_series(slices=4), with_lesion=True)
    assert [f.tracking_id for f in result.findings] == ["lesion-1"]
    assert [s.tracking_id for s in result.structures] == ["kidney_left", "kidney_right"]
    assert result.segmentation is not None
    left = result.structures[0]
    voxels = int((result.segmentation.label_map == KIDNEY_LEFT.value).sum())
    assert left.measurements.pixel_count == voxels
    assert left.measurements.volume_mm3 == pytest.approx(voxels * 0.8 * 0.8 * 2.5)
    assert left.frame_indices == (0, 1, 2, 3)
    assert result.conclusion().startswith("1 finding")


def test_seg_has_a_coded_segment_per_structure_with_laterality(tmp_path: Path) -> None:
    sources = synthetic_ct_series(slices=4)
    result = _result(sources, with_lesion=True)
    objects = {p.kind: p for p in produce_results(result, sources, OutputOptions(), tmp_path)}
    seg = hd.seg.segread(objects[ArtifactKind.SEG].path)
    assert seg.number_of_segments == 3
    uids = [s.SOPInstanceUID for s in sources]
    assert result.segmentation is not None
    for structure in result.structures:
        number = next(
            n
            for n in seg.segment_numbers
            if seg.get_segment_description(n).segment_label == structure.tracking_id
        )
        item = seg.SegmentSequence[number - 1]
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"  # Kidney
        modifier = item.SegmentedPropertyTypeCodeSequence[
            0
        ].SegmentedPropertyTypeModifierCodeSequence
        assert modifier[0].CodeMeaning == ("Left" if "left" in structure.tracking_id else "Right")
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
        pixels = seg.get_pixels_by_source_instance(
            uids, segment_numbers=[number], combine_segments=True, skip_overlap_checks=True
        )
        expected = result.segmentation.label_map == structure.label.value
        np.testing.assert_array_equal(pixels > 0, expected)


def test_sr_grades_findings_but_not_structures(tmp_path: Path) -> None:
    sources = synthetic_ct_series(slices=4)
    result = _result(sources, with_lesion=True)
    objects = {p.kind: p for p in produce_results(result, sources, OutputOptions(), tmp_path)}
    sr = hd.sr.srread(objects[ArtifactKind.SR].path)
    groups = {str(g.tracking_uid): g for g in sr.content.get_volumetric_roi_measurement_groups()}

    def has_severity(uid: str) -> bool:
        return any(
            i.ConceptNameCodeSequence[0].CodeValue == SEVERITY_CODE
            for i in groups[uid][0].ContentSequence
            if "ConceptNameCodeSequence" in i
        )

    assert has_severity(result.findings[0].tracking_uid)
    for structure in result.structures:
        assert not has_severity(structure.tracking_uid)
        volumes = [m for m in groups[structure.tracking_uid].get_measurements() if m.value]
        assert any(
            m.name.meaning == "Volume"
            and float(m.value) == pytest.approx(structure.measurements.volume_mm3)
            for m in volumes
        )


def test_anatomy_only_report_says_no_lesion_word(tmp_path: Path) -> None:
    sources = synthetic_ct_series(slices=4)
    result = _result(sources, with_lesion=False)
    assert result.findings == ()
    assert result.conclusion() == "2 anatomical structures segmented"
    objects = {p.kind: p for p in produce_results(result, sources, OutputOptions(), tmp_path)}
    text = _pdf_text(objects[ArtifactKind.PDF].path)
    assert "Anatomical structures" in text and "kidney_left" in text
    assert "lesion" not in text.lower(), text
    assert "Severity: none" in text


def test_findings_csv_lists_structures_without_severity() -> None:
    result = _result(synthetic_ct_series(slices=4), with_lesion=True)
    rows = list(csv.DictReader(io.StringIO(findings_csv(result))))
    assert [r["tracking_id"] for r in rows] == ["lesion-1", "kidney_left", "kidney_right"]
    assert rows[0]["severity"] and rows[1]["severity"] == "" and rows[2]["severity"] == ""
    assert float(rows[1]["volume_mm3"]) == pytest.approx(
        result.structures[0].measurements.volume_mm3
    )


def test_structures_and_label_kinds_survive_the_stored_result(tmp_path: Path) -> None:
    result = _result(synthetic_ct_series(slices=4), with_lesion=True)
    save_result(result, tmp_path)
    again = load_result(tmp_path)
    assert again.structures == result.structures
    assert again.segmentation is not None
    assert [lab.kind for lab in again.segmentation.labels] == ["finding", "anatomy", "anatomy"]
    assert again.to_json_dict()["structures"][0]["label"]["type_modifier"]["meaning"] == "Left"
