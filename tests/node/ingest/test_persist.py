"""The persist path on both database backends: files, rows, duplicates, late arrivals, refusals."""

from __future__ import annotations

import threading

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from core.config import Settings
from core.domain import Association, LateArrivalPolicy, StoreStatus, StudyState
from node.db.engine import Database
from node.db.orm import AuditEvent, Instance, Series, Study
from node.db.repositories.instances import instance_path, list_instances
from node.db.repositories.studies import get_study
from node.ingest.persist import GroupCommitter, persist_instance
from tests.node.ingest.helpers import dataset_part, make_instance, stored_files

SENDER = Association(calling_ae="MODALITY", called_ae="PACSNODE", peer_host="127.0.0.1")


def _actions(db: Database) -> list[str]:
    with db.read() as session:
        return [e.action for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]


def test_instance_is_stored_byte_identical_and_indexed(db: Database, settings: Settings) -> None:
    raw = make_instance(patient_name="Doe^Jane", modality="MR")
    outcome = persist_instance(db, settings, raw, SENDER)
    assert outcome.status is StoreStatus.SUCCESS and not outcome.duplicate
    with db.read() as session:
        study = get_study(session, outcome.study_instance_uid)
        assert study is not None
        assert (study.patient_name, study.modalities, study.instance_count) == ("Doe^Jane", "MR", 1)
        assert (study.calling_ae, study.called_ae, study.peer_host) == (
            "MODALITY",
            "PACSNODE",
            "127.0.0.1",
        )
        assert study.state == StudyState.RECEIVING.value
        [inst] = list_instances(session, outcome.study_instance_uid)
        assert instance_path(settings, inst).read_bytes() == raw  # Part-10 input kept as is
        assert inst.size_bytes == len(raw)
    assert _actions(db) == ["study.created"]
    assert not [p for p in settings.spool_dir.rglob("*") if p.name.endswith(".part")]


def test_bare_dataset_gets_file_meta_and_identical_dataset(
    db: Database, settings: Settings
) -> None:
    raw = make_instance()
    body = dataset_part(raw)
    outcome = persist_instance(
        db, settings, body, SENDER, transfer_syntax_uid="1.2.840.10008.1.2.1"
    )
    assert outcome.ok
    [path] = stored_files(settings)
    assert dataset_part(path.read_bytes()) == body


def test_duplicate_keeps_first_copy_and_counts(db: Database, settings: Settings) -> None:
    sop, study = generate_uid(), generate_uid()
    first = make_instance(sop_uid=sop, study_uid=study, patient_name="First^Copy")
    second = make_instance(sop_uid=sop, study_uid=study, patient_name="Second^Copy")
    assert persist_instance(db, settings, first, SENDER).duplicate is False
    outcome = persist_instance(db, settings, second, SENDER)
    assert outcome.status is StoreStatus.SUCCESS and outcome.duplicate
    [path] = stored_files(settings)
    assert path.read_bytes() == first
    with db.read() as session:
        row = get_study(session, study)
        assert row is not None and row.instance_count == 1
        assert session.scalars(select(Series)).one().instance_count == 1


def test_leftover_file_without_a_row_is_replaced(db: Database, settings: Settings) -> None:
    """A crash after the file got its name but before the commit leaves a file with no row; the
    sender was never acknowledged, so its retry must replace that file, not be called a duplicate."""
    raw = make_instance()
    first = persist_instance(db, settings, raw, SENDER)
    [path] = stored_files(settings)
    with db.write() as session:  # simulate the lost commit: the row is gone, the file stays
        session.execute(Instance.__table__.delete())
        session.execute(Series.__table__.delete())
        session.execute(Study.__table__.delete())
    path.write_bytes(b"half-written leftover")
    again = persist_instance(db, settings, raw, SENDER)
    assert again.ok and not again.duplicate and first.ok
    assert path.read_bytes() == raw
    assert not [p for p in settings.spool_dir.rglob("*") if p.name.endswith(".part")]


@pytest.mark.parametrize("same_series", [True, False])
def test_same_instance_from_concurrent_associations_is_stored_once(
    db: Database, settings: Settings, same_series: bool
) -> None:
    """Same SOP Instance UID at once from four senders (same path, or a corrected series UID)."""
    sop, study, series = generate_uid(), generate_uid(), generate_uid()
    copies = [make_instance(sop_uid=sop, study_uid=study, series_uid=series if same_series else None,
                            patient_name=f"Copy^{i}") for i in range(4)]  # fmt: skip
    committer = GroupCommitter(db, settings).start()
    results: list[bool] = []
    threads = [threading.Thread(target=lambda raw=raw: results.append(
        persist_instance(db, settings, raw, SENDER).duplicate)) for raw in copies]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    committer.stop()
    assert sorted(results) == [False, True, True, True]
    [path] = stored_files(settings)
    assert path.read_bytes() in copies
    with db.read() as session:
        row = get_study(session, study)
        assert row is not None and row.instance_count == 1
        [inst] = list_instances(session, study)
        assert instance_path(settings, inst) == path  # the row points at the one file kept
    assert not [p for p in settings.spool_dir.rglob("*") if p.name.endswith(".part")]


@pytest.mark.parametrize("state", [StudyState.COMPLETE, StudyState.PROCESSED])
def test_late_arrival_reprocess_reopens_study(
    db: Database, settings: Settings, state: StudyState
) -> None:
    settings = settings.model_copy(update={"completion": settings.completion.model_copy(
        update={"late_arrival": LateArrivalPolicy.REPROCESS})})  # fmt: skip
    study = generate_uid()
    persist_instance(db, settings, make_instance(study_uid=study), SENDER)
    with db.write() as session:
        row = get_study(session, study)
        assert row is not None
        row.state = state.value
    assert persist_instance(db, settings, make_instance(study_uid=study), SENDER).ok
    with db.read() as session:
        row = get_study(session, study)
        assert row is not None
        assert (row.state, row.result_version, row.instance_count) == ("receiving", 2, 2)
    assert _actions(db) == ["study.created", "study.reopened"]


def test_late_arrival_ignore_keeps_state(db: Database, settings: Settings) -> None:
    study = generate_uid()
    persist_instance(db, settings, make_instance(study_uid=study), SENDER)
    with db.write() as session:
        row = get_study(session, study)
        assert row is not None
        row.state = StudyState.PROCESSED.value
    assert persist_instance(db, settings, make_instance(study_uid=study), SENDER).ok
    with db.read() as session:
        row = get_study(session, study)
        assert row is not None
        assert (row.state, row.result_version, row.instance_count) == ("processed", 1, 2)
    assert _actions(db) == ["study.created", "study.late_instance"]


def test_undecodable_instance_is_refused_and_nothing_stored(
    db: Database, settings: Settings
) -> None:
    outcome = persist_instance(db, settings, make_instance()[:300], SENDER)
    assert outcome.status is StoreStatus.CANNOT_UNDERSTAND
    assert "declares" in outcome.reason or "truncated" in outcome.reason
    assert stored_files(settings) == []
    with db.read() as session:
        assert session.scalars(select(Study)).all() == []


def test_disk_watermark_refuses_with_out_of_resources(db: Database, settings: Settings) -> None:
    full = settings.model_copy(update={"min_free_disk_mb": 1e12})
    outcome = persist_instance(db, full, make_instance(), SENDER)
    assert outcome.status is StoreStatus.OUT_OF_RESOURCES == 0xA700
    assert "min_free_disk_mb" in outcome.reason
    assert stored_files(settings) == []


def test_group_commit_from_many_threads(db: Database, settings: Settings) -> None:
    """Concurrent handlers share commits; every instance gets a row and counts add up."""
    studies = [generate_uid() for _ in range(3)]
    payloads = [make_instance(study_uid=studies[i % 3], instance_number=i) for i in range(60)]
    committer = GroupCommitter(db, settings).start()
    outcomes: list[StoreStatus] = []
    lock = threading.Lock()

    def send(chunk: list[bytes]) -> None:
        for raw in chunk:
            status = persist_instance(db, settings, raw, SENDER).status
            with lock:
                outcomes.append(status)

    threads = [threading.Thread(target=send, args=(payloads[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    committer.stop()
    assert outcomes == [StoreStatus.SUCCESS] * 60
    assert committer.committed == 60
    with db.read() as session:
        rows = session.scalars(select(Study)).all()
        assert sorted(r.instance_count for r in rows) == [20, 20, 20]
    assert len(stored_files(settings)) == 60
    assert _actions(db).count("study.created") == 3


def test_receiver_commits_are_durable_on_sqlite(sqlite_db: Database, settings: Settings) -> None:
    """WAL + synchronous=NORMAL can lose the last commits on power loss; acknowledged rows must not."""
    committer = GroupCommitter(sqlite_db, settings).start()
    try:
        with sqlite_db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        committer.stop()


@pytest.mark.parametrize(("processes", "fsync"), [(1, False), (1, True), (2, False)])
def test_commits_take_turns_on_a_file_lock_only_with_someone_to_take_turns_with(
    sqlite_db: Database, settings: Settings, processes: int, fsync: bool
) -> None:
    """Several receiver processes on one SQLite file take turns on a flock, and so do a durable
    receiver's commits and its bulk sync's deletes; a lone receiver without fsync has nobody to
    take turns with and pays no lock calls per commit."""
    settings = settings.model_copy(update={"fsync": fsync})
    committer = GroupCommitter(sqlite_db, settings, processes=processes).start()
    try:
        assert persist_instance(sqlite_db, settings, make_instance(), SENDER).ok
    finally:
        committer.stop()
    locks = list(settings.data_dir.glob("*-receivers.lock"))
    assert len(locks) == (1 if processes > 1 or fsync else 0)
