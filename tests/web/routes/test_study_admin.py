"""A study's retention date, its source download (zip) and its deletion, rows and files."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta

import pydicom

from node.db.orm import Artifact, AuditEvent, Delivery, Instance, Job, Study
from tests.web.conftest import Console, csrf_of
from tests.web.processed import ProcessedStudy


def _events(console: Console, action: str) -> list[AuditEvent]:
    with console.db.read() as session:
        rows = session.query(AuditEvent).filter(AuditEvent.action == action).all()
        for row in rows:
            session.expunge(row)
        return rows


def _spool_files(console: Console) -> list[str]:
    with console.db.read() as session:
        return [p for (p,) in session.query(Instance.path).all()]


def test_study_page_shows_retention_download_and_delete(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    with console.db.read() as session:
        row = session.query(Study).one()
        expected = (row.last_received_at + timedelta(days=30)).strftime("%Y-%m-%d %H:%M:%S")
    page = console.login("viewer1").get(f"/studies/{study.study_uid}").text
    assert f"deleted from {expected} at the earliest" in page
    assert f'href="/studies/{study.study_uid}/download.zip"' in page
    assert 'id="delete-study"' not in page  # admins only
    assert 'id="delete-study"' in console.login("admin1").get(f"/studies/{study.study_uid}").text


def test_download_is_the_source_study_as_zip(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    response = console.login("viewer1").get(f"/studies/{study.study_uid}/download.zip")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    names = archive.namelist()
    assert len(names) == study.frame_count
    assert names[0] == "series001-MR/00001.dcm" and all(".." not in n for n in names)
    sent = {str(pydicom.dcmread(io.BytesIO(archive.read(n))).SOPInstanceUID) for n in names}
    with console.db.read() as session:
        stored = {uid for (uid,) in session.query(Instance.sop_instance_uid).all()}
    assert sent == stored
    events = _events(console, "study.download")
    assert [(e.actor, e.entity_id) for e in events] == [("viewer1", study.study_uid)]
    assert console.login("viewer1").get("/studies/1.2.3/download.zip").status_code == 404


def test_download_skips_a_path_outside_data_dir(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    with console.db.write() as session:
        first = session.query(Instance).order_by(Instance.instance_number).first()
        assert first is not None
        first.path = "../../../../etc/passwd"
    response = console.login("viewer1").get(f"/studies/{study.study_uid}/download.zip")
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.read("MISSING.txt").decode() == "series001-MR/00001.dcm\n"
    assert len(archive.namelist()) == study.frame_count  # the others and MISSING.txt


def test_delete_removes_rows_and_files(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    settings = console.settings
    outside = settings.data_dir / "not-in-spool.dcm"
    outside.write_bytes(b"keep me")
    with console.db.write() as session:  # a forged row naming a file outside the spool
        forged = session.query(Instance).order_by(Instance.instance_number).first()
        assert forged is not None
        forged_file = settings.data_dir / forged.path
        forged.path = "not-in-spool.dcm"
    files = [settings.data_dir / p for p in _spool_files(console)]
    results = settings.job_results_dir(study.job_id)
    assert results.is_dir() and all(f.exists() for f in files)
    admin = console.login("admin1")
    csrf = csrf_of(admin, f"/studies/{study.study_uid}")
    url = f"/studies/{study.study_uid}/delete"
    assert admin.post(url, data={"csrf_token": csrf}).status_code == 400  # not confirmed
    with console.db.write() as session:
        job = session.get(Job, study.job_id)
        assert job is not None
        job.state = "running"
    busy = admin.post(url, data={"csrf_token": csrf, "confirm": "yes"})
    assert busy.status_code == 409 and "running" in busy.text
    with console.db.write() as session:
        job = session.get(Job, study.job_id)
        assert job is not None
        job.state = "succeeded"
    done = admin.post(url, data={"csrf_token": csrf, "confirm": "yes"})
    assert done.status_code == 303 and done.headers["location"] == "/studies"
    with console.db.read() as session:
        for table in (Study, Instance, Job, Artifact, Delivery):
            assert session.query(table).count() == 0, table
    assert not any(f.exists() for f in files if f != settings.data_dir / "not-in-spool.dcm")
    assert not results.exists()
    assert outside.read_bytes() == b"keep me"  # never outside the spool
    # the file whose row was forged is named by no row any more: it stays, and so does its folder
    left = [p for p in (settings.spool_dir / study.study_uid).rglob("*") if p.is_file()]
    assert left == [forged_file]
    forged_file.unlink()
    events = _events(console, "study.deleted")
    assert [(e.actor, e.entity_id) for e in events] == [("admin1", study.study_uid)]
    assert admin.post(url, data={"csrf_token": csrf, "confirm": "yes"}).status_code == 404
    assert admin.get(f"/studies/{study.study_uid}").status_code == 404


def test_delete_prunes_emptied_spool_folders(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    admin = console.login("admin1")
    csrf = csrf_of(admin, f"/studies/{study.study_uid}")
    response = admin.post(
        f"/studies/{study.study_uid}/delete", data={"csrf_token": csrf, "confirm": "yes"}
    )
    assert response.status_code == 303
    assert not (console.settings.spool_dir / study.study_uid).exists()
    assert console.settings.spool_dir.is_dir()  # the spool itself stays
