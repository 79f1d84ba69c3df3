"""Orthanc as a source, against a real Orthanc: pull into the persist path, retries, /changes polling."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from core.config import Settings
from node.db.engine import Database
from node.db.orm import Instance, OrthancPull, Study
from node.db.repositories import audit
from node.ingest.orthanc_source import (
    enqueue_pull,
    pending_pulls,
    poll_changes,
    process_pending_pulls,
    pull_study,
)
from tests.conftest import SHARED_DATA
from tests.orthanc.harness import ORTHANC_BIN, OrthancProcess

pytestmark = pytest.mark.integration
MR_SERIES = SHARED_DATA / "mr-series-ge-adc"


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancProcess]:
    if ORTHANC_BIN is None:
        pytest.skip("Orthanc not installed")
    process = OrthancProcess(tmp_path / "orthanc")
    process.start()
    yield process
    process.stop()


def upload_mr_series(orthanc: OrthancProcess, count: int = 5) -> tuple[str, str]:
    """Upload the first ``count`` real MR slices; returns (Orthanc study ID, StudyInstanceUID)."""
    if not MR_SERIES.is_dir():
        pytest.skip(f"shared sample data not found at {MR_SERIES}")
    answer: dict[str, str] = {}
    for path in sorted(MR_SERIES.glob("*.dcm"))[:count]:
        response = httpx.post(f"{orthanc.url}/instances", content=path.read_bytes(), timeout=10)
        response.raise_for_status()
        answer = response.json()
    study = orthanc.get(f"/studies/{answer['ParentStudy']}")
    return answer["ParentStudy"], study["MainDicomTags"]["StudyInstanceUID"]


def source_settings(settings: Settings, orthanc: OrthancProcess, poll: bool = False) -> Settings:
    data = settings.model_dump()
    data["orthanc_sources"] = [{"url": orthanc.url, "poll": poll}]
    return Settings(**data)


def counts(db: Database, study_uid: str) -> tuple[int, bool, str]:
    with db.read() as session:
        n = session.scalar(select(func.count(Instance.id)))
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        return int(n or 0), bool(study.complete_requested), study.peer_host


def test_pull_persists_every_instance_and_requests_completion(
    db: Database, settings: Settings, orthanc: OrthancProcess
) -> None:
    cfg = source_settings(settings, orthanc)
    orthanc_id, study_uid = upload_mr_series(orthanc)
    assert pull_study(cfg, db, cfg.orthanc_sources[0], orthanc_id) == study_uid
    n, requested, peer = counts(db, study_uid)
    assert n == 5 and requested and peer == orthanc.url
    pull_study(cfg, db, cfg.orthanc_sources[0], orthanc_id)  # a repeated pull adds nothing
    assert counts(db, study_uid)[0] == 5


@pytest.mark.slow
def test_failed_pull_stays_queued_and_is_retried(
    sqlite_db: Database, settings: Settings, orthanc: OrthancProcess
) -> None:
    cfg = source_settings(settings, orthanc)
    orthanc_id, study_uid = upload_mr_series(orthanc, count=3)
    orthanc.stop()
    with sqlite_db.write() as session:
        enqueue_pull(session, cfg.orthanc_sources[0], orthanc_id, via="hook")
    assert process_pending_pulls(cfg, sqlite_db) == 0
    with sqlite_db.read() as session:
        [pull] = pending_pulls(session)
        assert pull.attempts == 1 and pull.last_error
        assert audit.query(session, action="orthanc.pull_failed")
        pull_id, created_at = pull.id, pull.created_at
    orthanc.start()
    with sqlite_db.write() as session:  # make it due now instead of after the backoff
        session.get_one(OrthancPull, pull_id).next_attempt_at = created_at
    assert process_pending_pulls(cfg, sqlite_db) == 1
    with sqlite_db.read() as session:
        assert pending_pulls(session) == []
    assert counts(sqlite_db, study_uid)[:2] == (3, True)


@pytest.mark.slow
def test_polling_follows_changes_from_the_cursor(
    sqlite_db: Database, settings: Settings, orthanc: OrthancProcess
) -> None:
    cfg = source_settings(settings, orthanc, poll=True)
    old_id, _ = upload_mr_series(orthanc, count=2)  # history before the node first looked
    deadline = time.monotonic() + 30  # its StableStudy change (StableAge 2 s) is history too
    while not orthanc.get(f"/studies/{old_id}")["IsStable"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert poll_changes(cfg, sqlite_db) == 0
    assert poll_changes(cfg, sqlite_db) == 0
    assert counts_any(sqlite_db) == 0
    _, study_uid = upload_new_study(orthanc)
    deadline = time.monotonic() + 30
    pulled = 0
    while time.monotonic() < deadline and not pulled:
        time.sleep(0.5)
        pulled = poll_changes(cfg, sqlite_db)
    assert pulled == 1
    assert counts(sqlite_db, study_uid)[:2] == (1, True)


def counts_any(db: Database) -> int:
    with db.read() as session:
        return int(session.scalar(select(func.count(Instance.id))) or 0)


def upload_new_study(orthanc: OrthancProcess) -> tuple[str, str]:
    """One MR slice re-identified as a new study (Orthanc's /modify keeps everything else)."""
    if not MR_SERIES.is_dir():
        pytest.skip(f"shared sample data not found at {MR_SERIES}")
    raw = sorted(MR_SERIES.glob("*.dcm"))[-1].read_bytes()
    from io import BytesIO

    from pydicom import dcmread
    from pydicom.uid import generate_uid

    ds = dcmread(BytesIO(raw))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    answer = httpx.post(f"{orthanc.url}/instances", content=buffer.getvalue(), timeout=10).json()
    return answer["ParentStudy"], str(ds.StudyInstanceUID)


def test_our_own_results_coming_back_are_not_inputs(
    sqlite_db: Database, settings: Settings, orthanc: OrthancProcess
) -> None:
    from node.db.orm import Artifact, Job

    cfg = source_settings(settings, orthanc)
    orthanc_id, study_uid = upload_mr_series(orthanc, count=3)
    ours = orthanc.sop_uids_of_study(study_uid)[0]  # pretend the node produced this one
    with sqlite_db.write() as session:
        job = Job(study=Study(study_instance_uid="9.9.9"), pipeline_name="p")
        session.add(Artifact(job=job, kind="sr", sop_instance_uid=ours, path="x.dcm"))
    pull_study(cfg, sqlite_db, cfg.orthanc_sources[0], orthanc_id)
    with sqlite_db.read() as session:
        stored = set(session.scalars(select(Instance.sop_instance_uid)).all())
    assert len(stored) == 2 and ours not in stored
