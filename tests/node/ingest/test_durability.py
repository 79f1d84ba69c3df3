"""0x0000 goes back only once the file, its name and its row are durable; the row last.

The receiver shares fsyncs across a commit group. An instance that starts a series (the general
path, ``upsert_instances``) has its data synced under its final name and its directory fsynced
with the name in it, both while its row is still uncommitted. A small instance of a known series
(the steady state, ``InstanceAppender``) is not synced on its own: its bytes are committed in the
same transaction as its row (``node.ingest.write_ahead``), so one commit makes both durable, and
the spool is synced in bulk later. These tests watch the syncs and the committed bytes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import select

from core.config import Settings
from node.db.engine import Database
from node.db.orm import Instance, Series, Study, UnsyncedFile
from node.ingest import spool as spool_module
from node.ingest import write_ahead
from tests.node.ingest.conftest import StartReceiver
from tests.node.ingest.helpers import CT_IMAGE_STORAGE, make_instance, stored_files

Events = list[tuple[str, str, frozenset[str], frozenset[str]]]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Write-ahead on, on both databases (unset, it is off on PostgreSQL)."""
    return settings.model_copy(update={"write_ahead_kb": 64})


def _committed(db: Database) -> frozenset[str]:
    with db.read() as session:
        return frozenset(session.scalars(select(Instance.sop_instance_uid)))


def _watch_syncs(monkeypatch: pytest.MonkeyPatch, db: Database) -> Events:
    """Record ("data", file, rows committed then, ()) for each fdatasync and ("dir", folder, rows
    committed then, names in the folder) for each directory fsync of the spool."""
    events: Events = []
    real_fdatasync, real_fsync_dir = os.fdatasync, spool_module.fsync_dir

    def fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        events.append(("data", os.readlink(f"/proc/self/fd/{fd}"), _committed(db), frozenset()))

    def fsync_dir(path: Path | str) -> None:
        names = frozenset(os.listdir(path))
        real_fsync_dir(path)
        events.append(("dir", str(path), _committed(db), names))

    monkeypatch.setattr(spool_module.os, "fdatasync", fdatasync)
    monkeypatch.setattr(spool_module, "fsync_dir", fsync_dir)
    return events


def _send(port: int, raws: list[bytes], after_each: Callable[[str, int], None]) -> None:
    ae = AE(ae_title="DURABLE")
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE")
    assert assoc.is_established
    try:
        for raw in raws:
            ds = pydicom.dcmread(BytesIO(raw))
            after_each(ds.SOPInstanceUID, int(assoc.send_c_store(ds).Status))
    finally:
        assoc.release()


def _committed_bytes(db: Database) -> dict[str, bytes]:
    with db.read() as session:
        return dict(session.execute(select(UnsyncedFile.sop_instance_uid, UnsyncedFile.data)).all())


def test_success_is_sent_after_file_name_and_row_are_durable(
    db: Database, settings: Settings, receiver_on: StartReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write_ahead, "SYNC_INTERVAL_S", 3600.0)  # no bulk sync during the test
    handle = receiver_on(db)
    events = _watch_syncs(monkeypatch, db)
    study, series = generate_uid(), generate_uid()
    raws = [make_instance(study_uid=study, series_uid=series, instance_number=i) for i in range(3)]
    acked: list[str] = []
    bytes_at_ack: dict[str, bytes] = {}

    def check_on_ack(sop: str, status: int) -> None:
        assert status == 0x0000
        assert sop in _committed(db), "success sent before the row was committed"
        bytes_at_ack.update(_committed_bytes(db))
        acked.append(sop)

    _send(handle.port, raws, check_on_ack)
    assert handle.committer.appender.appended >= 1  # the steady-state path was exercised
    files = {p.stem: p for p in stored_files(settings)}
    first, *steady = acked
    final = files[first]  # the general path: file and name synced before the commit
    assert any(e[0] == "data" and e[1] == str(final) and first not in e[2] for e in events), (
        f"{first}: its data was not synced under its final name before its commit"
    )
    assert any(e[0] == "dir" and e[1] == str(final.parent) and first not in e[2]
               and final.name in e[3] for e in events), (
        f"{first}: its directory was not synced with its name in it before its commit"
    )  # fmt: skip
    for sop in steady:  # the steady state: the file's bytes committed with the row
        assert bytes_at_ack.get(sop) == files[sop].read_bytes(), (
            f"{sop}: acknowledged without its bytes committed with its row"
        )
        assert not any(e[0] == "data" and e[1] == str(files[sop]) for e in events), (
            f"{sop}: synced on its own although its bytes were in the commit"
        )
    assert set(_committed_bytes(db)) == set(steady)
    assert handle.committer.bulk_syncer is not None
    assert handle.committer.bulk_syncer.sync_now() == len(steady)  # synced in bulk, rows gone
    assert _committed_bytes(db) == {}


def test_failed_directory_sync_is_never_acknowledged(
    db: Database, settings: Settings, receiver_on: StartReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the group's directory fsync fails, the name may not be durable: no success, no row."""
    handle = receiver_on(db)
    study, series = generate_uid(), generate_uid()
    raws = [make_instance(study_uid=study, series_uid=series, instance_number=i) for i in range(2)]
    statuses: list[int] = []
    _send(handle.port, raws[:1], lambda _sop, status: statuses.append(status))

    def broken(path: Path | str) -> None:
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(spool_module, "fsync_dir", broken)
    other_series = make_instance(study_uid=study, series_uid=generate_uid())  # the general path
    _send(handle.port, [other_series], lambda _sop, status: statuses.append(status))
    assert statuses[0] == 0x0000 and statuses[1] != 0x0000
    assert len(_committed(db)) == 1
    assert len(stored_files(settings)) == 1  # the unacknowledged file is gone


def test_received_copy_replaces_a_leftover_at_its_final_name(
    db: Database, settings: Settings, receiver_on: StartReceiver
) -> None:
    """A small data set is written straight to its final name; a crash there leaves a partial file
    with no row, never acknowledged. The sender's retry must replace it, not be called a
    duplicate, and leave no temp file behind."""
    handle = receiver_on(db)
    raw = make_instance()
    statuses: list[int] = []
    _send(handle.port, [raw], lambda _sop, status: statuses.append(status))
    [path] = stored_files(settings)
    stored = path.read_bytes()
    with db.write() as session:  # the lost commit: the row is gone, a half file stays
        session.execute(Instance.__table__.delete())
        session.execute(Series.__table__.delete())
        session.execute(Study.__table__.delete())
    path.write_bytes(stored[:100])
    _send(handle.port, [raw], lambda _sop, status: statuses.append(status))
    assert statuses == [0x0000, 0x0000]
    assert path.read_bytes() == stored
    assert len(_committed(db)) == 1
    assert [p.name for p in settings.spool_dir.rglob("*") if p.is_file()] == [path.name]


def test_received_duplicate_keeps_the_first_copy(
    db: Database, settings: Settings, receiver_on: StartReceiver
) -> None:
    handle = receiver_on(db)
    sop = generate_uid()
    first = make_instance(sop_uid=sop, patient_name="First^Copy")
    second = make_instance(sop_uid=sop, patient_name="Second^Copy")
    statuses: list[int] = []
    _send(handle.port, [first, second], lambda _sop, status: statuses.append(status))
    assert statuses == [0x0000, 0x0000]
    [path] = stored_files(settings)
    assert pydicom.dcmread(path).PatientName == "First^Copy"
    assert [p.name for p in settings.spool_dir.rglob("*") if p.is_file()] == [path.name]


def test_one_association_commits_in_its_own_thread(
    db: Database, settings: Settings, receiver_on: StartReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one association nobody else writes: its instances are synced and committed in its
    own thread, with no hand-off to a committer thread and back (two wake-ups per instance)."""
    handle = receiver_on(db)
    study, series = generate_uid(), generate_uid()
    raws = [make_instance(study_uid=study, series_uid=series, instance_number=i) for i in range(3)]
    threads: list[tuple[str, int]] = []
    real_fdatasync, appender = os.fdatasync, handle.committer.appender
    real_append = appender.append

    def fdatasync(fd: int) -> None:
        threads.append(("sync", threading.get_ident()))
        real_fdatasync(fd)

    def append(items: Any, *unsynced: Any) -> bool:
        threads.append(("commit", threading.get_ident()))
        return real_append(items, *unsynced)

    monkeypatch.setattr(spool_module.os, "fdatasync", fdatasync)
    monkeypatch.setattr(appender, "append", append)
    _send(handle.port, raws, lambda _sop, status: None)
    assert {kind for kind, _ in threads} == {"sync", "commit"}
    assert len({ident for _, ident in threads}) == 1, "the commit ran in another thread"
    assert not [t for t in threading.enumerate() if "commit" in t.name]
