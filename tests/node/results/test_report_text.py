"""PDF and SR say the same conclusion, severity words and image locations (issue 17)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from core.domain import ArtifactKind
from node.results.overlay import key_frame_index
from node.results.produce import OutputOptions, produce_results
from tests.node.results.factories import make_result, mr_series, synthetic_ct_series


def _pdf_text(path: Path) -> str:
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) not installed")
    document = bytes(pydicom.dcmread(path).EncapsulatedDocument)
    run = subprocess.run(["pdftotext", "-", "-"], input=document, capture_output=True, check=True)
    return " ".join(run.stdout.decode("utf-8").split())


def _sr_texts(path: Path) -> dict[str, list[str]]:
    sr = hd.sr.srread(path)
    container = next(
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"
    )
    texts: dict[str, list[str]] = {}
    for item in container.ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        value = (
            item.TextValue if item.ValueType == "TEXT" else item.ConceptCodeSequence[0].CodeMeaning
        )
        texts.setdefault(str(name), []).append(str(value))
    return texts


def test_findings_named_by_instance_number_in_pdf_and_sr(tmp_path: Path) -> None:
    sources = mr_series()
    result = make_result(sources)
    objects = {p.kind: p for p in produce_results(result, sources, OutputOptions(), tmp_path)}
    text = _pdf_text(objects[ArtifactKind.PDF].path)
    numbers = [int(sources[i].InstanceNumber) for i in result.findings[0].frame_indices]
    series = int(sources[0].SeriesNumber)
    assert "Images" in text and f"{min(numbers)}-{max(numbers)}" in text
    key = int(sources[key_frame_index(result)].InstanceNumber)
    assert f"Key image: image {key} (series {series}," in text
    assert "frame " not in text.lower().replace("frames", "")  # no internal index
    assert "Moderate" in text and "Mild" in text and " Low" not in text and " High" not in text
    assert f"Conclusion: {result.conclusion()}" in text
    sr = _sr_texts(objects[ArtifactKind.SR].path)
    assert sr["Impression"] == [result.conclusion()]
    assert sr["Key Images"][0].startswith(f"image {key} (series {series}, ")
    assert any(
        t.startswith(f"lesion-1 (Moderate): images {min(numbers)}-{max(numbers)}")
        for t in sr["Finding"]
    )


def test_classifier_positive_without_lesion_is_one_consistent_conclusion(tmp_path: Path) -> None:
    sources = synthetic_ct_series()
    result = make_result(sources, with_findings=False)
    assert result.classification is not None
    result = replace(
        result, classification=replace(result.classification, probabilities=(0.22, 0.78))
    )
    objects = {p.kind: p for p in produce_results(result, sources, OutputOptions(), tmp_path)}
    text = _pdf_text(objects[ArtifactKind.PDF].path)
    assert "classifier suspicious (abnormal 0.78), no lesion segmented" in text
    assert "No findings" not in text
    sr = _sr_texts(objects[ArtifactKind.SR].path)
    assert sr["Impression"] == ["classifier suspicious (abnormal 0.78), no lesion segmented"]
    # the CAD summary code agrees with the classification beside it
    assert sr["CAD Processing and Findings Summary"] == ["All algorithms succeeded; with findings"]
