"""Result dates and times in the node's time zone: ContentDate/Time local to the node, the
TimezoneOffsetFromUTC that says so on every object, and the PDF's printed creation time."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from zoneinfo import ZoneInfo

import pydicom
import pytest

from core.domain import ArtifactKind
from node.results.produce import OutputOptions, produce_results
from tests.node.results.factories import make_result, synthetic_ct_series


def _produce(tmp_path: Path, zone: str, created_at: str) -> dict[ArtifactKind, pydicom.Dataset]:
    sources = synthetic_ct_series()
    result = dataclasses.replace(make_result(sources), created_at=created_at)
    produced = produce_results(result, sources, OutputOptions(zone=ZoneInfo(zone)), tmp_path)
    return {p.kind: pydicom.dcmread(p.path) for p in produced}


def test_every_object_is_dated_in_the_node_zone_across_midnight(tmp_path: Path) -> None:
    objects = _produce(tmp_path, "America/New_York", "2024-05-06T03:30:00+00:00")
    assert set(objects) == {
        ArtifactKind.SEG,
        ArtifactKind.OVERLAY,
        ArtifactKind.PDF,
        ArtifactKind.SR,
    }
    for kind, ds in objects.items():
        assert (ds.ContentDate, ds.ContentTime) == ("20240505", "233000"), kind
        assert ds.TimezoneOffsetFromUTC == "-0400", kind  # EDT on that day
        if "SeriesDate" in ds:
            assert (ds.SeriesDate, ds.SeriesTime) == ("20240505", "233000"), kind


def test_same_moment_in_winter_berlin_and_the_pdf_prints_it(tmp_path: Path) -> None:
    objects = _produce(tmp_path, "Europe/Berlin", "2024-01-06T23:15:00+00:00")
    pdf = objects[ArtifactKind.PDF]
    assert (pdf.ContentDate, pdf.ContentTime, pdf.TimezoneOffsetFromUTC) == (
        "20240107",
        "001500",
        "+0100",
    )
    if shutil.which("pdftotext") is None:
        pytest.skip("poppler-utils not installed")
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf.EncapsulatedDocument[: pdf.EncapsulatedDocumentLength])
    text = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, check=True).stdout
    words = text.decode().replace("\n", " ")
    assert "2024-01-07 00:15 CET (UTC+0100)" in words
    study_date = str(pdf.StudyDate)
    assert len(study_date) == 8
    assert f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:]}" in words  # DA for people
