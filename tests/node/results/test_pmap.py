"""The explanation's Parametric Map: built on every source geometry, gated, read back, optional."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from core.domain import ArtifactKind
from node.results.produce import OutputOptions, produce_results
from node.results.store import load_result, save_result
from node.results.validate import read_parametric_map
from tests.node.results.conftest import load_sources
from tests.node.results.factories import make_result


@pytest.mark.parametrize("kind", ["cr-monochrome1", "synthetic-ct", "enhanced-ct"])
def test_parametric_map_validates_and_round_trips(kind: str, tmp_path: Path) -> None:
    sources = load_sources(kind)
    result = make_result(sources, explain=True)
    produced = produce_results(result, sources, OutputOptions(pdf=False, overlay=False), tmp_path)
    pmap = next(o for o in produced if o.kind is ArtifactKind.PMAP)
    assert pmap.sop_class_uid == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    if shutil.which("dciodvfy"):
        run = subprocess.run(["dciodvfy", str(pmap.path)], capture_output=True, text=True)
        errors = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")]
        assert errors == [], errors
    keys = [(f.sop_instance_uid, f.frame_number) for f in result.source_frames]
    reread, values = read_parametric_map(pmap.path.read_bytes(), keys)
    assert isinstance(reread, hd.pm.ParametricMap)
    assert result.explanation is not None
    np.testing.assert_array_equal(values, result.explanation.maps)
    mapping = reread.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTExplanation == "Grad-CAM for abnormal"
    assert mapping.LUTLabel == "EXPLANATION"
    assert (float(mapping.RealWorldValueSlope), float(mapping.RealWorldValueIntercept)) == (1, 0)
    purposes = [
        item.PurposeOfReferenceCodeSequence[0].CodeValue
        for item in reread.ContributingEquipmentSequence
        if "PurposeOfReferenceCodeSequence" in item
    ]
    assert "1630" in purposes  # IHE AIR processing algorithm
    assert reread.StudyInstanceUID == result.study_instance_uid


def test_no_explanation_no_parametric_map(tmp_path: Path) -> None:
    sources = load_sources("ct-small")
    produced = produce_results(make_result(sources), sources, OutputOptions(pdf=False), tmp_path)
    assert ArtifactKind.PMAP not in {o.kind for o in produced}
    assert not (tmp_path / "pmap.dcm").exists()


def test_retry_builds_identical_bytes(tmp_path: Path) -> None:
    sources = load_sources("cr-monochrome1")
    result = make_result(sources, explain=True)
    options = OutputOptions(pdf=False, overlay=False, sr=False, seg=False)
    first = produce_results(result, sources, options, tmp_path / "a")[0].path.read_bytes()
    second = produce_results(result, sources, options, tmp_path / "b")[0].path.read_bytes()
    assert first == second


def test_gate_refuses_a_map_that_reads_back_different(tmp_path: Path) -> None:
    from node.results.validate import ResultValidationError, validate_pmap

    sources = load_sources("ct-small")
    result = make_result(sources, explain=True)
    options = OutputOptions(pdf=False, overlay=False, sr=False, seg=False)
    data = produce_results(result, sources, options, tmp_path)[0].path.read_bytes()
    assert result.explanation is not None
    other = replace(result.explanation, maps=result.explanation.maps * 0.5)
    with pytest.raises(ResultValidationError, match="differ"):
        validate_pmap(data, replace(result, explanation=other))
    assert pydicom.dcmread(tmp_path / "pmap.dcm").ContentLabel == "AI_EXPLANATION"


def test_explanation_survives_save_and_load(tmp_path: Path) -> None:
    result = make_result(load_sources("synthetic-ct"), explain=True)
    save_result(result, tmp_path)
    loaded = load_result(tmp_path)
    assert loaded.explanation is not None and result.explanation is not None
    np.testing.assert_array_equal(loaded.explanation.maps, result.explanation.maps)
    assert loaded.explanation.member_layers == {"tiny-resnet": "layer4"}
    assert loaded.to_json_dict()["explanation"]["method"] == "gradcam"


@pytest.mark.skipif(shutil.which("pdfimages") is None, reason="poppler-utils not installed")
def test_pdf_shows_the_explanation_beside_the_classification(tmp_path: Path) -> None:
    sources = load_sources("cr-monochrome1")
    texts, images = {}, {}
    for explain in (False, True):
        out = tmp_path / str(explain)
        produced = produce_results(
            make_result(sources, explain=explain), sources, OutputOptions(overlay=False), out
        )
        ds = pydicom.dcmread(next(p.path for p in produced if p.kind is ArtifactKind.PDF))
        pdf = out / "report.pdf"
        pdf.write_bytes(ds.EncapsulatedDocument[: ds.EncapsulatedDocumentLength])
        run = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, check=True)
        texts[explain] = run.stdout.decode()
        listing = subprocess.run(["pdfimages", "-list", str(pdf)], capture_output=True, check=True)
        images[explain] = len(listing.stdout.decode().splitlines()) - 2
    assert "Grad-CAM for abnormal" in texts[True] and "Grad-CAM" not in texts[False]
    assert images[True] == images[False] + 1  # the key image, and now the explanation map


def test_explanation_render_is_the_map_in_colour_over_the_source() -> None:
    from node.results.overlay import render_explanation, source_frame_pixels

    sources = load_sources("ct-small")
    assert render_explanation(make_result(sources), sources, 0) is None
    result = make_result(sources, explain=True)
    picture = render_explanation(result, sources, 0)
    assert result.explanation is not None and picture is not None
    grey = source_frame_pixels(sources, 0)
    low = result.explanation.maps[0] < 0.01
    # where the map is ~0 the source shows through; at its peak the colour is jet's red
    assert np.abs(picture[low][:, 0].astype(int) - grey[low].astype(int)).max() <= 2
    peak = np.unravel_index(np.argmax(result.explanation.maps[0]), grey.shape)
    assert picture[peak][0] > picture[peak][2]


def test_a_map_highdicom_cannot_build_leaves_the_other_results(tmp_path: Path) -> None:
    """pydicom-data's JPEG-lossy.dcm (NM as Secondary Capture): highdicom refuses its Parametric
    Map; the SEG, PDF and SR are still made and the job says why the map is missing."""
    from tests.node.results.factories import read_testdata

    sources = [read_testdata("JPEG-lossy.dcm")]
    produced = produce_results(
        make_result(sources, explain=True), sources, OutputOptions(), tmp_path
    )
    kinds = {p.kind for p in produced}
    assert ArtifactKind.PMAP not in kinds
    assert {ArtifactKind.SEG, ArtifactKind.PDF, ArtifactKind.SR} <= kinds
    assert any(w.startswith("pmap not made") for w in produced.warnings)
