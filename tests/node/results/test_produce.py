"""produce_results: every object built, validated, written, deterministic, and safe on bad input."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from core.domain import ArtifactKind
from node.results.overlay import annotation_layout
from node.results.produce import (
    OutputOptions,
    ProducedResults,
    ResultValidationError,
    produce_results,
)
from tests.node.results.factories import make_result, read_testdata, synthetic_ct_series


def _produce(sources, tmp_path: Path, **kwargs) -> ProducedResults:
    result = make_result(sources, with_findings=kwargs.pop("with_findings", True))
    return produce_results(result, sources, OutputOptions(**kwargs), tmp_path / "out")


def test_every_source_kind_gives_four_objects_in_dispatch_order(sources, tmp_path: Path) -> None:
    produced = _produce(sources, tmp_path)
    assert [p.kind for p in produced] == [
        ArtifactKind.SEG,
        ArtifactKind.OVERLAY,
        ArtifactKind.PDF,
        ArtifactKind.SR,
    ]
    series = {p.series_instance_uid for p in produced}
    assert len(series) == 4 and str(sources[0].SeriesInstanceUID) not in series
    for obj in produced:
        ds = pydicom.dcmread(obj.path)
        assert obj.size_bytes == obj.path.stat().st_size
        assert ds.SOPInstanceUID == obj.sop_instance_uid
        assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
        assert ds.PatientID == sources[0].get("PatientID", "")
        assert "demo-lesion v1.0.0" in ds.SeriesDescription
        purposes = [
            (
                i.PurposeOfReferenceCodeSequence[0].CodeValue,
                i.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator,
            )
            for i in ds.ContributingEquipmentSequence
        ]
        assert purposes.count(("1630", "99IHE")) == 3  # pipeline + two models
        device_uids = {i.get("DeviceUID") for i in ds.ContributingEquipmentSequence}
        assert {"2.25.1111", "2.25.2222"} <= device_uids
        assert ds.ContentDate == "20240506" and ds.ContentTime == "070809"


def test_retry_is_byte_identical_and_new_version_is_new(tmp_path: Path) -> None:
    sources = synthetic_ct_series()
    result = make_result(sources)
    first = produce_results(result, sources, OutputOptions(), tmp_path / "a")
    again = produce_results(result, sources, OutputOptions(), tmp_path / "b")
    assert [p.path.read_bytes() for p in first] == [p.path.read_bytes() for p in again]
    bumped = produce_results(result, sources, OutputOptions(result_version=2), tmp_path / "c")
    assert not {p.sop_instance_uid for p in first} & {p.sop_instance_uid for p in bumped}
    runs = tuple(dataclasses.replace(r, model_version="9.9") for r in result.model_runs)
    new_model = produce_results(
        dataclasses.replace(result, model_runs=runs), sources, OutputOptions(), tmp_path / "d"
    )
    assert not {p.sop_instance_uid for p in first} & {p.sop_instance_uid for p in new_model}


def test_no_findings_gives_sr_and_pdf_but_no_seg_nor_empty_overlay(tmp_path: Path) -> None:
    produced = _produce(synthetic_ct_series(), tmp_path, with_findings=False)
    assert [p.kind for p in produced] == [ArtifactKind.PDF, ArtifactKind.SR]
    assert produced.notes and "nothing to show" in produced.notes[0]
    sr = hd.sr.srread(next(p.path for p in produced if p.kind == ArtifactKind.SR))
    assert "All algorithms succeeded; without findings" in str(sr.ContentSequence)


def test_fractional_seg_keeps_probabilities(tmp_path: Path) -> None:
    produced = _produce(synthetic_ct_series(), tmp_path, seg_type="FRACTIONAL")
    seg = hd.seg.segread(produced[0].path)
    assert seg.SegmentationType == "FRACTIONAL"
    assert np.isclose(seg.pixel_array.max() / float(seg.MaximumFractionalValue), 0.9, atol=0.01)


def test_options_switch_objects_off(tmp_path: Path) -> None:
    produced = _produce(synthetic_ct_series(), tmp_path, overlay=False, pdf=False)
    assert [p.kind for p in produced] == [ArtifactKind.SEG, ArtifactKind.SR]


def test_bad_mask_fails_the_gate_and_writes_nothing(tmp_path: Path) -> None:
    sources = synthetic_ct_series()
    result = make_result(sources)
    assert result.segmentation is not None
    result.segmentation.label_map = result.segmentation.label_map[:, :10]  # wrong geometry
    with pytest.raises(ResultValidationError, match="seg") as info:
        produce_results(result, sources, OutputOptions(), tmp_path / "out")
    assert info.value.kind == ArtifactKind.SEG
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_sources_are_not_modified(tmp_path: Path) -> None:
    sources = synthetic_ct_series(quirks=True)
    before = [ds.to_json_dict() for ds in sources]
    _produce(sources, tmp_path)
    assert [ds.to_json_dict() for ds in sources] == before


def test_quirky_headers_are_cleaned_in_outputs(tmp_path: Path) -> None:
    produced = _produce(synthetic_ct_series(quirks=True), tmp_path)
    for obj in produced:
        ds = pydicom.dcmread(obj.path)
        assert str(ds.PatientName) == "DOE^JANE"
        assert ds.PatientSex == ""  # "FEMALE" is not a code; nothing is invented
        assert "AccessionNumber" in ds and "StudyID" in ds


def test_non_ascii_names_survive_in_every_object(tmp_path: Path) -> None:
    sources = synthetic_ct_series()
    for ds in sources:
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "Müller^Jörg"
    for obj in _produce(sources, tmp_path):
        ds = pydicom.dcmread(obj.path)
        assert ds.SpecificCharacterSet == "ISO_IR 192", obj.kind
        assert str(ds.PatientName) == "Müller^Jörg", obj.kind


def test_radiograph_with_pixel_spacing_and_no_frame_of_reference(tmp_path: Path) -> None:
    """A DX/CR that carries PixelSpacing (as the demo phantoms and some modalities write it)
    still gets a SEG that reads back (highdicom's segread needs SliceThickness otherwise)."""
    from models.training.dicom_export import write_series
    from models.training.phantoms import make_2d_phantom

    files = write_series(make_2d_phantom(np.random.default_rng(7), lesion_count=2), tmp_path / "cr",
                         modality="CR")  # fmt: skip
    sources = [pydicom.dcmread(f) for f in files]
    assert "PixelSpacing" in sources[0] and "FrameOfReferenceUID" not in sources[0]
    produced = _produce(sources, tmp_path)
    assert [p.kind for p in produced][0] == ArtifactKind.SEG
    assert hd.seg.segread(produced[0].path).number_of_segments >= 1


def test_single_segment_seg_builds_validates_and_is_cited(tmp_path: Path) -> None:
    """One label: highdicom puts Segment Identification in the shared functional groups."""
    from node.results.seg import seg_frame_for

    sources = synthetic_ct_series()
    result = make_result(sources, two_labels=False)
    produced = produce_results(result, sources, OutputOptions(), tmp_path / "out")
    seg = pydicom.dcmread(produced[0].path)
    assert produced[0].kind == ArtifactKind.SEG and len(seg.SegmentSequence) == 1
    lesion_frame = result.findings[0].frame_indices[0]
    assert seg_frame_for(seg, 1, result.source_frames[lesion_frame].sop_instance_uid) is not None


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "US1_J2KR.dcm"])  # RGB, and YBR_RCT in JPEG 2000
def test_colour_ultrasound_gets_every_object_and_a_colour_overlay(
    name: str, tmp_path: Path
) -> None:
    sources = [read_testdata(name)]
    assert sources[0].SamplesPerPixel == 3
    result = make_result(sources)
    produced = produce_results(result, sources, OutputOptions(), tmp_path / "out")
    assert [p.kind for p in produced] == [
        ArtifactKind.SEG,
        ArtifactKind.OVERLAY,
        ArtifactKind.PDF,
        ArtifactKind.SR,
    ]
    assert produced.warnings == ()
    overlay = pydicom.dcmread(produced[1].path).pixel_array.astype(int)
    source = sources[0].pixel_array.astype(int)
    assert overlay.shape == source.shape == (480, 640, 3)
    assert result.segmentation is not None
    untouched = result.segmentation.label_map[0] == 0  # away from the mask and the boxes
    for box in result.detections:
        untouched[int(box.y0) - 4 : int(box.y1) + 4, int(box.x0) - 4 : int(box.x1) + 4] = False
    for item in annotation_layout(result, 0, (source.shape[1], source.shape[0])):  # IDs, "AI"
        x0, y0, x1, y1 = item.box
        untouched[max(y0 - 3, 0) : y1 + 4, max(x0 - 3, 0) : x1 + 4] = False
    # the source's own colours (the Doppler flow) come through unchanged where nothing is drawn
    assert np.array_equal(overlay[untouched], source[untouched])
    assert (np.ptp(source[untouched], axis=-1) > 50).sum() > 1000  # there is colour to keep


def test_an_optional_object_that_cannot_be_built_leaves_seg_and_sr(tmp_path: Path) -> None:
    sources = synthetic_ct_series()
    result = make_result(sources)
    key = sources[2]  # the overlay's key frame: its pixel data is cut short (undecodable)
    key.PixelData = key.PixelData[:100]
    produced = produce_results(result, sources, OutputOptions(), tmp_path / "out")
    assert [p.kind for p in produced] == [ArtifactKind.SEG, ArtifactKind.SR]
    assert [w.split(":")[0] for w in produced.warnings] == ["overlay not made", "pdf not made"]
    assert all("pixel data" in w.lower() for w in produced.warnings), produced.warnings
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["seg.dcm", "sr.dcm"]


def test_source_defects_are_not_copied_into_results(tmp_path: Path) -> None:
    """NUL-padded procedure codes, a 0\\0 pixel spacing and a PatientSex of 0000 (all seen in
    real inputs): results carry clean codes, no spacing and an empty sex, and pass dciodvfy."""
    source = read_testdata("US1_UNCR.dcm")
    source.PixelSpacing = [0, 0]
    source.PatientSex = "0000"
    source.StudyDescription = "US NECK"
    code = pydicom.Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "US0042\0", "99LOCAL\0"
    code.CodeMeaning = "US neck\0"
    source.ProcedureCodeSequence = [code]
    produced = produce_results(make_result([source]), [source], OutputOptions(), tmp_path / "out")
    assert source.ProcedureCodeSequence[0].CodeValue == "US0042\0"  # the source is untouched
    for obj in produced:
        ds = pydicom.dcmread(obj.path)
        assert ds.StudyDescription == "US NECK", obj.kind
        assert ds.PatientSex == "", obj.kind
        assert "PixelSpacing" not in ds, obj.kind
        for item in ds.get("ProcedureCodeSequence", []):
            assert (item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning) == (
                "US0042",
                "99LOCAL",
                "US neck",
            )
    pdf = pydicom.dcmread(next(p.path for p in produced if p.kind == ArtifactKind.PDF))
    [cited] = pdf.SourceInstanceSequence
    assert cited.ReferencedSOPInstanceUID == source.SOPInstanceUID
    if shutil.which("dciodvfy"):
        for obj in produced:
            out = subprocess.run(["dciodvfy", str(obj.path)], capture_output=True, text=True)
            errors = [line for line in out.stderr.splitlines() if line.startswith("Error")]
            assert errors == [], (obj.kind, errors)
