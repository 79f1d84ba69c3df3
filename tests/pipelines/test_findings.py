from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from core.dicom_uids import deterministic_uid
from core.domain import CodedConcept, Severity
from pipelines.contract import DetectionBox, LabelSpec
from pipelines.findings import FindingContext, attach_boxes, segment_findings, tracking_uid
from pipelines.spec import SeverityRules

LESION = LabelSpec(
    1,
    "lesion",
    CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
    CodedConcept("52988006", "SCT", "Lesion"),
)


def _ctx(values: np.ndarray, volumetric: bool = False) -> FindingContext:
    return FindingContext(
        "1.2.3", "demo-2d", "1.0.0", values, (0.5, 0.5), 2.0, volumetric, "HU", SeverityRules()
    )


def _box(
    frame: int, x0: float, y0: float, x1: float, y1: float, score: float = 0.8
) -> DetectionBox:
    return DetectionBox(frame, x0, y0, x1, y1, LESION, score, {"m": score})


def test_one_finding_per_component_in_reading_order_with_measurements() -> None:
    label_map = np.zeros((1, 100, 100), np.uint8)
    yy, xx = np.mgrid[:100, :100]
    label_map[0][(yy - 70) ** 2 + (xx - 30) ** 2 <= 100] = 1  # lower disc, r=10
    label_map[0, 10:20, 60:90] = 1  # upper bar
    values = np.where(label_map > 0, 50.0, 0.0).astype(np.float32)
    findings = segment_findings(_ctx(values), label_map, (LESION,))
    assert [f.tracking_id for f in findings] == ["lesion-1", "lesion-2"]
    bar, disc = findings
    assert bar.measurements.bbox == (0, 10, 60, 0, 19, 89)
    assert bar.measurements.area_mm2 == pytest.approx(300 * 0.25)
    assert disc.measurements.circularity == pytest.approx(1.0, abs=0.1)
    assert disc.measurements.mean_intensity == 50.0
    assert disc.severity is Severity.LOW and bar.severity is not Severity.LOW
    assert disc.tracking_uid == tracking_uid("1.2.3", "demo-2d", "1.0.0", "lesion-2")
    assert tracking_uid("1.2.3", "demo-2d", "1.0.1", "lesion-2") != disc.tracking_uid


def test_boxes_attach_to_overlapping_findings_or_become_their_own() -> None:
    label_map = np.zeros((2, 50, 50), np.uint8)
    label_map[1, 10:20, 10:20] = 1
    values = np.zeros(label_map.shape, np.float32)
    ctx = _ctx(values)
    findings = segment_findings(ctx, label_map, (LESION,))
    boxes = (_box(1, 8, 8, 22, 22), _box(1, 30, 30, 40, 40, 0.5), _box(0, 8, 8, 22, 22, 0.4))
    out = attach_boxes(ctx, findings, label_map, boxes)
    assert out[0].box == boxes[0]
    box_only = [f for f in out if f.segment_number is None]
    assert [f.tracking_id for f in box_only] == ["lesion-box-1", "lesion-box-2"]
    assert box_only[0].measurements.area_mm2 == pytest.approx(100 * 0.25)
    assert box_only[1].frame_indices == (0,)  # same place, other image: not the segment's box


@pytest.mark.parametrize("volumetric", [False, True])
def test_components_from_post_processing_give_the_same_findings(volumetric: bool) -> None:
    """Handing on post-processing's labelling changes nothing but the time it takes."""
    from pipelines.postprocess import postprocess_components
    from pipelines.spec import PostprocessSpec

    rng = np.random.default_rng(5)
    second = LabelSpec(2, "other", LESION.category, LESION.type)
    probs = rng.random((2, 4, 40, 40)).astype(np.float32)
    label_map, components = postprocess_components(
        probs, ["lesion", "other"], PostprocessSpec(min_component_pixels=3), volumetric, 0.25, 0.5
    )
    values = rng.normal(0.0, 100.0, label_map.shape).astype(np.float32)
    ctx = _ctx(values, volumetric)
    handed_on = segment_findings(ctx, label_map, (LESION, second), components)
    assert handed_on == segment_findings(ctx, label_map, (LESION, second))
    assert {f.segment_number for f in handed_on} == {1, 2}
    other_flag = {v: replace(c, volumetric=not volumetric) for v, c in components.items()}
    assert segment_findings(ctx, label_map, (LESION, second), other_flag) == handed_on


def test_tracking_uids_use_the_one_scheme() -> None:
    uid = tracking_uid("1.2.3", "demo-2d", "1.0.0", "lesion-2")
    assert uid == deterministic_uid("pacsnode-tracking", "1.2.3", "demo-2d", "1.0.0", "lesion-2")


def _previous_findings_map(
    ctx: FindingContext, label_map: np.ndarray, labels: tuple[LabelSpec, ...]
) -> tuple[list[tuple[object, ...]], np.ndarray]:
    """The previous way: each label's components labelled on the whole map, measured there by
    the previous ``measure_labels``, numbered in box order into a whole-map finding map."""
    from scipy import ndimage

    from pipelines.postprocess import connectivity
    from tests.pipelines.test_measurements import previous_measure_labels

    found: list[tuple[object, ...]] = []
    finding_map = np.zeros(label_map.shape, np.uint16)
    for label in labels:
        components, count = ndimage.label(
            label_map == label.value, structure=connectivity(ctx.volumetric)
        )
        if count == 0:
            continue
        measured = previous_measure_labels(
            components,
            count,
            ctx.values,
            ctx.pixel_spacing_mm,
            ctx.slice_spacing_mm,
            ctx.volumetric,
            ctx.intensity_unit,
        )
        ordered = sorted(enumerate(measured, start=1), key=lambda item: item[1][0].bbox[:3])
        for index, (m, frames) in ordered:
            found.append((label.value, m, frames))
            finding_map[components == index] = len(found)
    return found, finding_map


@pytest.mark.parametrize("volumetric", [False, True])
def test_findings_from_cropped_components_equal_the_whole_map_way(volumetric: bool) -> None:
    """Post-processing hands on each label's components as a crop of the map: the findings,
    their measurements (to the last bit: the outline keeps its coordinates) and the finding map
    are those of labelling and measuring the whole map, for noisy masks of two labels with many
    components, holes, one huge component and components on the image border."""
    from pipelines.findings import segment_findings_and_map
    from pipelines.postprocess import clean_label_map
    from pipelines.spec import PostprocessSpec
    from tests.pipelines.test_measurements import noisy_masks

    rng = np.random.default_rng(4)
    second = LabelSpec(2, "other", LESION.category, LESION.type)
    masks = noisy_masks(rng, volumetric)
    for first, other in zip(masks, masks[1:] + masks[:1], strict=True):
        raw = np.where(first, 1, np.where(other, 2, 0)).astype(np.uint8)
        raw = np.pad(raw, ((0, 0), (3, 2), (4, 1)))  # labels' boxes inside the image
        for spec in (PostprocessSpec(min_component_pixels=3), PostprocessSpec(fill_holes=False)):
            label_map, components = clean_label_map(raw.copy(), 2, spec, volumetric, 0.25, 0.5)
            values = rng.normal(0.0, 100.0, label_map.shape).astype(np.float32)
            # spacings whose products round: the outline's coordinates must be the same ones
            ctx = replace(_ctx(values, volumetric), pixel_spacing_mm=(0.7, 0.6))
            findings, finding_map = segment_findings_and_map(
                ctx, label_map, (LESION, second), components
            )
            expected, expected_map = _previous_findings_map(ctx, label_map, (LESION, second))
            assert [(f.segment_number, f.measurements, f.frame_indices) for f in findings] == (
                expected
            )
            assert np.array_equal(finding_map, expected_map)
            assert len(findings) > 0
