"""Write bytes → read back: the same mask, measurements, codes and references, for every writer."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from core.domain import ArtifactKind
from node.results.exports import findings_csv, masks_zip, pdfs_zip, result_json
from node.results.produce import OutputOptions, produce_results
from node.results.store import load_result, save_result
from tests.node.results.conftest import load_sources
from tests.node.results.factories import LESION, NODULE, make_result, mr_series, synthetic_ct_series


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory):
    sources = synthetic_ct_series()
    result = make_result(sources)
    out = tmp_path_factory.mktemp("rt")
    objects = {p.kind: p for p in produce_results(result, sources, OutputOptions(), out)}
    return sources, result, objects


def test_seg_round_trip_mask_codes_references(produced) -> None:
    sources, result, objects = produced
    seg = hd.seg.segread(objects[ArtifactKind.SEG].path)
    for label in (LESION, NODULE):
        number = label.value
        desc = seg.get_segment_description(number)
        assert desc.segmented_property_type.value == label.type.value
        assert desc.segmented_property_category.value == label.category.value
        assert desc.algorithm_type.value == "AUTOMATIC"
        assert desc.algorithm_identification[0].AlgorithmName == "demo-lesion"
        volume = seg.get_pixels_by_source_instance(
            [s.SOPInstanceUID for s in sources],
            segment_numbers=[number],
            combine_segments=True,
            skip_overlap_checks=True,
        )
        np.testing.assert_array_equal(volume > 0, result.segmentation.label_map == number)
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID


def _qualitative_evaluations(sr: hd.sr.Comprehensive3DSR) -> list[str]:
    """Meanings and texts in TID 1500's document-level "Qualitative Evaluations" container."""
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "C0034375":
            return [
                str(i.ConceptCodeSequence[0].CodeMeaning) if i.ValueType == "CODE" else i.TextValue
                for i in item.ContentSequence
            ]
    return []


def test_sr_round_trip_measurements_and_references(produced) -> None:
    _sources, result, objects = produced
    sr = hd.sr.srread(objects[ArtifactKind.SR].path)
    groups = {str(g.tracking_uid): g for g in sr.content.get_volumetric_roi_measurement_groups()}
    lesion = next(f for f in result.findings if f.tracking_id == "lesion-1")
    group = groups[lesion.tracking_uid]
    volume = next(m for m in group.get_measurements() if m.name.value == "118565006")
    assert volume.value == pytest.approx(lesion.measurements.volume_mm3)
    assert volume.unit.value == "mm3"
    # the area (of the largest cross-section) is in the outline's group on the key slice
    outline = next(
        g
        for g in sr.content.get_planar_roi_measurement_groups()
        if str(g.tracking_uid) == lesion.tracking_uid
    )
    area = next(m for m in outline.get_measurements() if m.name.value == "42798000")
    assert area.value == pytest.approx(lesion.measurements.area_mm2)
    assert area.unit.value == "mm2"
    assert group.reference_type.value == "121191"  # Referenced Segment
    assert objects[ArtifactKind.SEG].sop_instance_uid in str(group)
    severities = [e.value.meaning for e in group.get_qualitative_evaluations()]
    assert "Moderate" in severities
    # a volume: TID 1411 groups cite the segments, the box is a one-slice volume surface; each
    # segment finding also has a TID 1410 outline on its key slice (what OHIF draws)
    planar = sr.content.get_planar_roi_measurement_groups()
    outlines = [g for g in planar if "box" not in str(g.tracking_identifier)]
    assert sorted(str(g.tracking_uid) for g in outlines) == sorted(
        f.tracking_uid for f in result.findings
    )
    assert all(g.roi.graphic_type.value == "POLYLINE" for g in planar)
    boxes = [g for g in planar if "box" in str(g.tracking_identifier)]
    assert [b.reference_type.value for b in boxes] == ["111030"]  # Image Region, as OHIF draws
    assert sr.content.get_volumetric_roi_measurement_groups()  # the segments: TID 1411
    summary = _qualitative_evaluations(sr)
    assert any(s.endswith("with findings") for s in summary), summary  # the CAD summary
    obs = sr.content.get_observer_contexts()
    assert any(o.observer_type.value == "121007" for o in obs)  # the algorithm as a device


def test_pdf_renders_and_text_extracts(produced, tmp_path: Path) -> None:
    _sources, _result, objects = produced
    ds = pydicom.dcmread(objects[ArtifactKind.PDF].path)
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)])
    text = subprocess.run(
        ["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    for expected in (
        "Not for diagnostic use",
        "SYN-001",
        "tiny-unet",
        "1.2.0",
        "cuda:0",
        "lesion-1",
        "Moderate",
        "abnormal",
    ):
        assert expected in text
    subprocess.run(["pdftoppm", "-png", "-r", "30", str(pdf), str(tmp_path / "page")], check=True)
    assert 1 <= len(list(tmp_path.glob("page*.png"))) <= 2


def test_overlay_is_burned_in_rgb(produced) -> None:
    _sources, _result, objects = produced
    ds = pydicom.dcmread(objects[ArtifactKind.OVERLAY].path)
    assert ds.BurnedInAnnotation == "YES" and ds.PhotometricInterpretation == "RGB"
    pixels = ds.pixel_array
    reddish = (pixels[..., 0].astype(int) - pixels[..., 2]) > 60
    assert reddish.any()  # the heatmap is visible


def test_store_round_trip(tmp_path: Path) -> None:
    result = make_result(synthetic_ct_series())
    save_result(result, tmp_path)
    loaded = load_result(tmp_path)
    assert loaded.to_json_dict() == result.to_json_dict()
    np.testing.assert_array_equal(loaded.segmentation.label_map, result.segmentation.label_map)
    np.testing.assert_array_equal(
        loaded.segmentation.probabilities, result.segmentation.probabilities
    )
    assert loaded.findings == result.findings


def test_exports(produced) -> None:
    _sources, result, objects = produced
    csv_text = findings_csv(result)
    assert csv_text.splitlines()[0].startswith("tracking_id,")
    assert len(csv_text.splitlines()) == 1 + len(result.findings)
    assert csv_text.splitlines()[0].endswith(",images,key_image")
    assert ",Moderate," in csv_text.splitlines()[1]  # the reports' severity words
    import io
    import zipfile

    names = zipfile.ZipFile(
        io.BytesIO(masks_zip(result, objects[ArtifactKind.SEG].path))
    ).namelist()
    assert "seg.dcm" in names and len([n for n in names if n.endswith(".png")]) == 4
    assert zipfile.ZipFile(io.BytesIO(pdfs_zip([objects[ArtifactKind.PDF].path]))).namelist() == [
        "pdf.dcm"
    ]
    assert '"pipeline_name": "demo-lesion"' in result_json(result)


def test_cr_monochrome1_two_dimensional(tmp_path: Path) -> None:
    sources = load_sources("cr-monochrome1")
    result = make_result(sources)
    objects = {p.kind: p for p in produce_results(result, sources, OutputOptions(), tmp_path)}
    seg = hd.seg.segread(objects[ArtifactKind.SEG].path)
    assert "FrameOfReferenceUID" not in seg
    sr = hd.sr.srread(objects[ArtifactKind.SR].path)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert sr.content.get_volumetric_roi_measurement_groups() == []  # one template: TID 1410
    boxes = [g for g in groups if g.reference_type.value == "111030"]
    assert boxes and boxes[0].roi.value_type.value == "SCOORD"  # no patient plane: 2D coordinates
    segments = [g for g in groups if g.reference_type.value == "121214"]
    assert segments, "segment findings cite their SEG frame"
    for group in segments:
        image = next(
            i
            for i in group[0].ContentSequence
            if i.ConceptNameCodeSequence[0].CodeValue == "121214"
        )
        ref = image.ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == objects[ArtifactKind.SEG].sop_instance_uid
        seg_frame = int(ref.ReferencedFrameNumber)
        assert 1 <= seg_frame <= seg.NumberOfFrames
        assert "ReferencedSegmentNumber" not in ref  # PS3.3: frame or segment, not both
    _ = mr_series  # MR covered in conformance tests
