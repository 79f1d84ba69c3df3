"""Every script in the PDF report: embedded Unicode fonts, names from PN components, and
``pdftotext`` (poppler) giving back the Chinese, Greek, Arabic, Hebrew and Cyrillic names exactly."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from node.results.fonts import report_fonts
from node.results.pdf import format_person_name
from node.results.produce import OutputOptions, produce_results
from tests.node.results.factories import make_result, synthetic_ct_series

NAMES = [  # (PN as stored, as the report writes it)
    ("王^小明", "王小明"),
    ("ΠΑΠΑΔΟΠΟΥΛΟΣ^Γιώργος", "ΠΑΠΑΔΟΠΟΥΛΟΣ, Γιώργος"),
    ("عبد الله^محمد", "محمد عبد الله"),
    ("כהן^דוד", "דוד כהן"),
    ("ИВАНОВ^Иван^Петрович", "ИВАНОВ, Иван Петрович"),
    ("MÜLLER^Jörg", "MÜLLER, Jörg"),
]


def test_names_are_formatted_from_their_components() -> None:
    assert format_person_name("MÜLLER^Jörg") == "MÜLLER, Jörg"
    assert format_person_name("Smith^John^Q^Dr^Jr") == "Smith, Dr John Q Jr"
    assert format_person_name("Yamada^Tarou=山田^太郎=やまだ^たろう") == (
        "Yamada, Tarou (山田太郎 / やまだたろう)"
    )
    assert format_person_name("") == "" and format_person_name("^^") == ""
    assert format_person_name("DOE") == "DOE"


def _pdf_text(tmp_path: Path, patient_name: str) -> tuple[str, str]:
    sources = synthetic_ct_series()
    for ds in sources:
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = patient_name
    produced = produce_results(
        make_result(sources), sources, OutputOptions(overlay=False, seg=False), tmp_path / "out"
    )
    ds = pydicom.dcmread(next(p.path for p in produced if p.kind == "pdf"))
    assert str(ds.PatientName) == patient_name  # the DICOM header keeps the stored value
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(ds.EncapsulatedDocument[: ds.EncapsulatedDocumentLength])
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, check=True).stdout
    fonts = subprocess.run(["pdffonts", str(pdf)], capture_output=True, check=True).stdout
    return text.decode("utf-8"), fonts.decode()


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")
@pytest.mark.parametrize(("stored", "written"), NAMES, ids=[n for n, _ in NAMES])
def test_pdftotext_finds_the_name_exactly(tmp_path: Path, stored: str, written: str) -> None:
    if report_fonts().fallback is None and "王" in stored:
        pytest.skip("no CJK font installed (apt install fonts-droid-fallback)")
    text, fonts = _pdf_text(tmp_path, stored)
    assert written in text, text[:300]
    used = [line.split()[0] for line in fonts.splitlines()[2:] if " yes " in line]
    assert any("DejaVuSans" in name for name in used), fonts  # embedded, not base-14
    if "王" in stored:
        assert any("DroidSansFallback" in name for name in used), fonts
