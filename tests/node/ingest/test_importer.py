"""``pacsnode import``: files, folders and zip archives; non-DICOM files skipped with reasons."""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian
from sqlalchemy import func, select

from app.cli import main
from core.config import Settings
from node.db.engine import Database
from node.db.orm import Instance, Study
from node.ingest.importer import import_paths
from tests.conftest import SHARED_DATA
from tests.node.ingest.helpers import dataset_part, make_instance, stored_files


def test_folder_zip_and_junk(db: Database, settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "in" / "nested"
    folder.mkdir(parents=True)
    (folder / "a.dcm").write_bytes(make_instance())
    (folder / "b").write_bytes(make_instance())  # no extension: still DICOM
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.dcm").write_bytes(make_instance()[:400])
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("x/c.dcm", make_instance())
        zf.writestr("x/readme.md", "# hello")
    report = import_paths(db, settings, [tmp_path / "in", archive, tmp_path / "missing"])
    assert (report.stored, report.duplicates, report.failed) == (3, 0, 0)
    assert report.skipped == {"not DICOM": 2, "not a valid instance": 1, "not found": 1}
    assert any("broken.dcm" in e for e in report.errors)
    again = import_paths(db, settings, [tmp_path / "in"])
    assert (again.stored, again.duplicates) == (0, 2)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 3
        assert {s.source for s in session.scalars(select(Study))} == {"import"}


def test_files_without_file_meta(sqlite_db: Database, settings: Settings, tmp_path: Path) -> None:
    """Old archives hold bare datasets (implicit VR little endian, no preamble, no file meta)."""
    ds = pydicom.dcmread(BytesIO(make_instance()))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    encoded = BytesIO()
    ds.save_as(encoded)
    bare = tmp_path / "IM0001"
    bare.write_bytes(dataset_part(encoded.getvalue()))
    report = import_paths(sqlite_db, settings, [bare])
    assert report.stored == 1, report.errors
    [stored] = stored_files(settings)
    assert dataset_part(stored.read_bytes()) == bare.read_bytes()


@pytest.mark.skipif(
    not (SHARED_DATA / "mr-series-ge-adc").is_dir(), reason="../shared/data missing"
)
def test_cli_imports_real_series(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("PACSNODE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PACSNODE_MIN_FREE_DISK_MB", "0")
    assert main(["import", str(SHARED_DATA / "mr-series-ge-adc")]) == 0
    out = capsys.readouterr().out
    assert "stored 20" in out and "skipped 1" in out  # LICENSE.txt
    db = Database(settings.effective_database_url)
    try:
        with db.read() as session:
            assert session.scalar(select(Study.instance_count)) == 20
    finally:
        db.dispose()
