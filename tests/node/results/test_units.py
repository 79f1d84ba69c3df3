"""Units for people in the PDF (and console), UCUM codes kept in the SR."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from core.domain import ArtifactKind
from core.units import readable_unit, with_unit
from node.results.produce import OutputOptions, produce_results
from tests.node.results.factories import make_result, read_testdata, synthetic_ct_series


def test_ucum_codes_read_as_words_and_symbols() -> None:
    assert readable_unit("[arb'U]") == "arbitrary units"
    assert readable_unit("[hnsf'U]") == readable_unit("HU") == "HU"
    assert (readable_unit("mm2"), readable_unit("mm3")) == ("mm²", "mm³")
    assert readable_unit("1") == "" and readable_unit(None) == ""
    assert readable_unit("kBq/mL") == "kBq/mL"  # unknown: as it is
    assert with_unit("812.5", "HU") == "812.5 HU" and with_unit("-", "HU") == "-"
    assert with_unit("12.0", "%") == "12.0%"


def _pdf_text_and_sr_units(sources: list, folder: Path) -> tuple[str, set[str]]:
    result = make_result(sources)
    produced = {p.kind: p.path for p in produce_results(result, sources, OutputOptions(), folder)}
    pdf = pydicom.dcmread(produced[ArtifactKind.PDF])
    path = folder / "report.pdf"
    path.write_bytes(pdf.EncapsulatedDocument[: pdf.EncapsulatedDocumentLength])
    text = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, check=True).stdout
    sr = hd.sr.srread(produced[ArtifactKind.SR])
    units = {
        str(element.value[0].CodeValue)
        for element in sr.iterall()
        if element.keyword == "MeasurementUnitsCodeSequence"
    }
    return text.decode(), units


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")
def test_pdf_says_arbitrary_units_and_hu_and_the_sr_keeps_ucum(tmp_path: Path) -> None:
    words, units = _pdf_text_and_sr_units([read_testdata("MR_small.dcm")], tmp_path / "mr")
    assert "arb'U" not in words and "arbitrary" in words
    assert "[arb'U]" in units and "mm2" in units  # UCUM codes, as TID 1500 wants
    words, units = _pdf_text_and_sr_units(synthetic_ct_series(), tmp_path / "ct")
    assert "812.5 HU" in words and "[hnsf'U]" in units
