"""One SEG segment per finding, and a planar ROI per finding that viewers draw (issue 17).

Findings come from the pipeline's own finding builder on a label map with several components of
one label, so "the segment is exactly that finding's component" is checked against components
found independently here (scipy), from the bytes read back with highdicom.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from scipy import ndimage

from core.domain import ArtifactKind
from node.results.produce import OutputOptions, produce_results
from node.results.seg import SegOptions, build_segmentation
from node.results.source import clean_sources
from pipelines.contract import PipelineResult
from pipelines.findings import FindingContext, segment_findings_and_map
from pipelines.spec import SeverityRules
from tests.node.results.conftest import load_sources
from tests.node.results.factories import LESION, NODULE, make_result, synthetic_ct_series


def _result_with_components(sources: list, volumetric: bool) -> PipelineResult:
    """Two separate lesions (one over two slices) and a nodule, findings from the pipeline."""
    base = make_result(sources)
    frames, rows, cols = len(sources), int(sources[0].Rows), int(sources[0].Columns)
    label_map = np.zeros((frames, rows, cols), np.uint8)
    mid = frames // 2
    label_map[max(mid - 1, 0) : mid + 1, 4:12, 4:10] = LESION.value
    label_map[mid, 18:26, 16:28] = LESION.value
    label_map[mid, 3:7, 22:28] = NODULE.value
    ctx = FindingContext(
        base.study_instance_uid,
        base.pipeline_name,
        base.pipeline_version,
        np.full(label_map.shape, 100.0, np.float32),
        (1.0, 1.0),
        2.5 if volumetric else None,
        volumetric,
        "HU",
        SeverityRules(),
    )
    findings, finding_map = segment_findings_and_map(ctx, label_map, (LESION, NODULE))
    assert base.segmentation is not None
    segmentation = replace(
        base.segmentation,
        label_map=label_map,
        probabilities=np.stack([(label_map == v).astype(np.float32) for v in (1, 2)]),
        finding_map=finding_map,
    )
    return replace(base, segmentation=segmentation, findings=tuple(findings), detections=())


def _component(label_map: np.ndarray, finding, volumetric: bool) -> np.ndarray:
    """The finding's connected component, found here with scipy, by its bounding-box corner."""
    structure = np.ones((3, 3, 3), bool)
    if not volumetric:
        structure[0] = structure[2] = False
    labels, _ = ndimage.label(label_map == finding.segment_number, structure)
    f0, r0, c0 = finding.measurements.bbox[:3]
    corner = labels[f0, r0 : r0 + 4, c0 : c0 + 4]
    return labels == corner[corner > 0][0]


def _frame_of(sr_region_group) -> tuple[str, np.ndarray]:
    roi = sr_region_group.roi
    image = roi.ContentSequence[0].ReferencedSOPSequence[0]
    return str(image.ReferencedSOPInstanceUID), roi.value


@pytest.mark.parametrize("segments", ["per_finding", "per_label"])
def test_each_finding_has_its_own_segment_cited_by_its_group(tmp_path: Path, segments: str) -> None:
    sources = synthetic_ct_series(slices=4)
    result = _result_with_components(sources, volumetric=True)
    assert [f.tracking_id for f in result.findings] == ["lesion-1", "lesion-2", "nodule-1"]
    options = OutputOptions(seg_segments=segments)
    objects = {p.kind: p for p in produce_results(result, sources, options, tmp_path)}
    seg = hd.seg.segread(objects[ArtifactKind.SEG].path)
    sr = hd.sr.srread(objects[ArtifactKind.SR].path)
    groups = {str(g.tracking_uid): g for g in sr.content.get_volumetric_roi_measurement_groups()}
    uids = [s.SOPInstanceUID for s in sources]
    assert seg.number_of_segments == (3 if segments == "per_finding" else 2)
    for finding in result.findings:
        group = groups[finding.tracking_uid]
        ref = next(
            i
            for i in group[0].ContentSequence
            if i.ConceptNameCodeSequence[0].CodeValue == "121191"
        )
        number = int(ref.ReferencedSOPSequence[0].ReferencedSegmentNumber)
        description = seg.get_segment_description(number)
        assert description.segmented_property_type.value == finding.label.type.value
        assert description.segmented_property_category.value == finding.label.category.value
        pixels = seg.get_pixels_by_source_instance(
            uids, segment_numbers=[number], combine_segments=True, skip_overlap_checks=True
        )
        if segments == "per_finding":
            assert description.segment_label == finding.tracking_id
            assert description.tracking_uid == finding.tracking_uid
            expected = _component(result.segmentation.label_map, finding, volumetric=True)
        else:
            assert description.segment_label == finding.label.name
            expected = result.segmentation.label_map == finding.segment_number
        np.testing.assert_array_equal(pixels > 0, expected)


def test_each_finding_gets_a_closed_outline_on_its_key_slice(tmp_path: Path) -> None:
    sources = synthetic_ct_series(slices=4)
    result = _result_with_components(sources, volumetric=True)
    objects = {p.kind: p for p in produce_results(result, sources, OutputOptions(), tmp_path)}
    sr = hd.sr.srread(objects[ArtifactKind.SR].path)
    planar = {str(g.tracking_uid): g for g in sr.content.get_planar_roi_measurement_groups()}
    for finding in result.findings:
        group = planar[finding.tracking_uid]
        assert group.roi.graphic_type.value == "POLYLINE"
        source_uid, points = _frame_of(group)
        key = result.key_index_of(finding)
        assert source_uid == sources[key].SOPInstanceUID
        np.testing.assert_array_equal(points[0], points[-1])  # closed
        mask = _component(result.segmentation.label_map, finding, True)[key]
        rows, cols = np.nonzero(mask)
        # the outline runs through the border pixels' centres (SCOORD: centre of pixel i = i + 0.5)
        assert points[:, 0].min() == cols.min() + 0.5 and points[:, 0].max() == cols.max() + 0.5
        assert points[:, 1].min() == rows.min() + 0.5 and points[:, 1].max() == rows.max() + 0.5


def test_planar_source_groups_cite_their_own_segment_frame(tmp_path: Path) -> None:
    sources = load_sources("cr-monochrome1")
    result = _result_with_components(sources, volumetric=False)
    objects = {p.kind: p for p in produce_results(result, sources, OutputOptions(), tmp_path)}
    seg = hd.seg.segread(objects[ArtifactKind.SEG].path)
    sr = hd.sr.srread(objects[ArtifactKind.SR].path)
    cited = set()
    for group in sr.content.get_planar_roi_measurement_groups():
        if group.reference_type.value != "121214":  # Referenced Segmentation Frame
            continue
        cited.add(str(group.tracking_uid))
        finding = next(f for f in result.findings if f.tracking_uid == str(group.tracking_uid))
        image = next(
            i
            for i in group[0].ContentSequence
            if i.ConceptNameCodeSequence[0].CodeValue == "121214"
        )
        ref = image.ReferencedSOPSequence[0]
        item = seg.PerFrameFunctionalGroupsSequence[int(ref.ReferencedFrameNumber) - 1]
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        assert seg.get_segment_description(number).tracking_uid == finding.tracking_uid
    assert cited == {f.tracking_uid for f in result.findings}


@pytest.mark.parametrize("volumetric", [True, False])
def test_each_measurement_is_written_once_per_finding(tmp_path: Path, volumetric: bool) -> None:
    """Viewers merge the groups of one tracking UID (OHIF v3 concatenates their measurements, and
    listed "Area" twice): each measurement is in one group only, all of them are there, and a
    box group beside them carries none of the finding's values as its own."""
    sources = synthetic_ct_series(slices=4) if volumetric else load_sources("cr-monochrome1")
    result = _result_with_components(sources, volumetric=volumetric)
    result = replace(
        result,
        findings=(
            replace(result.findings[0], box=_box_of(result.findings[0])),
            *result.findings[1:],
        ),
    )
    objects = {p.kind: p for p in produce_results(result, sources, OutputOptions(), tmp_path)}
    sr = hd.sr.srread(objects[ArtifactKind.SR].path)
    groups = [
        *sr.content.get_planar_roi_measurement_groups(),
        *sr.content.get_volumetric_roi_measurement_groups(),
    ]
    for finding in result.findings:
        own = [g for g in groups if str(g.tracking_uid) == finding.tracking_uid]
        assert len(own) == 2  # the segment's group and the outline's
        names = [m.name.meaning for g in own for m in g.get_measurements()]
        assert len(names) == len(set(names)), names
        m = finding.measurements
        expected = {"Area", "Circularity", *(["Volume"] if volumetric else [])}
        assert expected <= set(names), names
        assert m.mean_intensity is not None and len(names) == len(expected) + 1  # and the mean
        outline = next(g for g in own if g.reference_type.value == "111030")  # Image Region
        assert {x.name.meaning for x in outline.get_measurements()} == {"Area", "Circularity"}
    box_uid = {str(g.tracking_uid) for g in groups} - {f.tracking_uid for f in result.findings}
    assert len(box_uid) == 1
    box = next(g for g in groups if str(g.tracking_uid) in box_uid)
    assert str(box.tracking_identifier) == f"{result.findings[0].tracking_id} box"
    assert box.get_measurements() == []


def _box_of(finding):  # type: ignore[no-untyped-def]
    from pipelines.contract import DetectionBox

    f0, r0, c0, _f1, r1, c1 = finding.measurements.bbox
    return DetectionBox(f0, c0, r0, c1 + 1.0, r1 + 1.0, finding.label, 0.9)


@pytest.mark.parametrize("volumetric", [True, False])
def test_planar_groups_carry_cornerstones_encoding(tmp_path: Path, volumetric: bool) -> None:
    """OHIF hydrates an SR into its Measurements panel with Cornerstone's adapters: they pick the
    tool by the Tracking Identifier's prefix, read the coordinates from the first NUM's
    INFERRED FROM SCOORD (else "No spatial coordinates group found") and label the row with the
    group's Comment. Each outline (and box) group is written that way; the browser test
    (tests/viewer/test_ohif.py) shows OHIF listing them."""
    sources = synthetic_ct_series(slices=4) if volumetric else load_sources("cr-monochrome1")
    result = _result_with_components(sources, volumetric=volumetric)
    result = replace(
        result,
        findings=(
            replace(result.findings[0], box=_box_of(result.findings[0])),
            *result.findings[1:],
        ),
    )
    objects = {p.kind: p for p in produce_results(result, sources, OutputOptions(), tmp_path)}
    sr = hd.sr.srread(objects[ArtifactKind.SR].path)
    groups = [
        g
        for g in sr.content.get_planar_roi_measurement_groups()
        if g.reference_type.value == "111030"
    ]  # Image Region: the outlines and the box
    by_label = {}
    for group in groups:
        items = list(group[0].ContentSequence)
        region = next(i for i in items if i.ValueType == "SCOORD")
        comment = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == "121106"]
        assert len(comment) == 1 and comment[0].RelationshipType == "CONTAINS"
        by_label[comment[0].TextValue] = group
        for num in (i for i in items if i.ValueType == "NUM"):
            inferred = [c for c in num.ContentSequence if c.ValueType == "SCOORD"]
            assert len(inferred) == 1, num
            assert inferred[0].RelationshipType == "INFERRED FROM"
            assert inferred[0].GraphicType == region.GraphicType == "POLYLINE"
            assert list(inferred[0].GraphicData) == list(region.GraphicData)
            image = inferred[0].ContentSequence[0]  # SELECTED FROM the same source image
            assert image.RelationshipType == "SELECTED FROM"
            assert (
                image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                == region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            )
    for finding in result.findings:
        outline = by_label[finding.tracking_id]
        assert str(outline.tracking_uid) == finding.tracking_uid
        assert str(outline.tracking_identifier) == (
            f"Cornerstone3DTools@^0.1.0:PlanarFreehandROI:{finding.tracking_id}"
        )
        assert outline.get_measurements()  # area and circularity, each tied to the outline
    assert f"{result.findings[0].tracking_id} box" in by_label


@pytest.mark.parametrize("order", ["as found", "reversed"])
def test_segment_n_is_exactly_the_nth_findings_component(order: str) -> None:
    """Whatever order the findings come in (components 1..N in order take a faster path), the
    SEG's segment N holds the pixels of the N-th finding's component and nothing else."""
    sources = synthetic_ct_series(slices=4)
    result = _result_with_components(sources, volumetric=True)
    if order == "reversed":
        result = replace(result, findings=result.findings[::-1])
    built = build_segmentation(result, clean_sources(sources), SegOptions())
    assert built is not None and result.segmentation is not None
    finding_map = result.segmentation.finding_map
    assert finding_map is not None
    expected = np.zeros(finding_map.shape, np.uint16)
    for number, finding in enumerate(result.findings, start=1):
        expected[finding_map == finding.component] = number
    np.testing.assert_array_equal(built.expected, expected)
    assert built.finding_segments == {f.tracking_uid: n for n, f in enumerate(result.findings, 1)}
