"""Small instances: bytes committed with the row, files synced in bulk, restored after a crash.

A power cut can leave a file that was written but not yet synced empty, short or full of zeros.
Its acknowledged bytes are in the database (``unsynced_files``) until the bulk sync covers it, and
the next receiver start writes any such file again. These tests cut the power by stopping the
receiver without its final sync and damaging the files the way a lost page cache would.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import delete, event, func, select, update

from core.config import Settings
from node.db.engine import Database
from node.db.orm import Study, UnsyncedFile
from node.ingest import spool as spool_module
from node.ingest import write_ahead
from node.ingest.scp import ReceiverHandle
from node.ingest.writer_turns import WriterTurns
from tests.node.ingest.conftest import StartReceiver
from tests.node.ingest.helpers import make_instance, stored_files
from tests.node.ingest.test_durability import _committed_bytes, _send


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Write-ahead on, on both databases (unset, it is off on PostgreSQL)."""
    return settings.model_copy(update={"write_ahead_kb": 64})


def _receive_series(handle: ReceiverHandle, count: int) -> None:
    study, series = generate_uid(), generate_uid()
    raws = [make_instance(study_uid=study, series_uid=series, instance_number=i)
            for i in range(count)]  # fmt: skip
    statuses: list[int] = []
    _send(handle.port, raws, lambda _sop, status: statuses.append(status))
    assert statuses == [0x0000] * count


def _received_before_a_power_cut(
    db: Database, receiver_on: StartReceiver, monkeypatch: pytest.MonkeyPatch, count: int
) -> dict[str, bytes]:
    """Receive a series of ``count``, then stop the receiver as a crash would (the bulk sync
    never runs); the bytes committed with the rows, by SOP Instance UID."""
    monkeypatch.setattr(write_ahead, "SYNC_INTERVAL_S", 3600.0)
    handle = receiver_on(db)
    _receive_series(handle, count)
    unsynced = _committed_bytes(db)
    assert len(unsynced) == count - 1  # the first of the series took the general path (synced)
    syncer = handle.committer.bulk_syncer
    assert syncer is not None
    syncer.stop(final_sync=False)
    handle.committer.bulk_syncer = None
    handle.stop(timeout=5)
    return unsynced


def test_files_a_crash_emptied_are_written_again_at_start(
    db: Database,
    settings: Settings,
    receiver_on: StartReceiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    unsynced = _received_before_a_power_cut(db, receiver_on, monkeypatch, 4)
    files = {p.stem: p for p in stored_files(settings)}
    emptied, deleted, zeroed = sorted(unsynced)
    files[emptied].write_bytes(b"")
    files[deleted].unlink()
    files[zeroed].write_bytes(bytes(len(unsynced[zeroed])))
    receiver_on(db)  # a receiver starting again restores them before it listens
    for sop, data in unsynced.items():
        assert files[sop].read_bytes() == data, f"{sop}: acknowledged bytes lost"
    assert "restored 3 received file(s)" in caplog.text  # the admin is told
    assert _committed_bytes(db) == {}  # synced and cleared


def test_a_deleted_study_is_not_brought_back(
    db: Database, settings: Settings, receiver_on: StartReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    _received_before_a_power_cut(db, receiver_on, monkeypatch, 3)
    with db.write() as session:
        session.execute(delete(Study))
    for path in stored_files(settings):
        path.unlink()
    assert _committed_bytes(db) == {}  # the rows went with the instances
    receiver_on(db)
    assert stored_files(settings) == []


def test_the_bulk_sync_clears_the_rows_on_its_own(
    db: Database, receiver_on: StartReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write_ahead, "SYNC_INTERVAL_S", 0.05)
    handle = receiver_on(db)
    _receive_series(handle, 5)
    deadline = time.monotonic() + 10
    while _committed_bytes(db) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _committed_bytes(db) == {}
    assert handle.committer.bulk_syncer is not None and handle.committer.bulk_syncer.syncs >= 1


def test_write_ahead_off_flushes_every_file_on_its_own(
    db: Database, settings: Settings, receiver_on: StartReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_sync_fd = spool_module.Spool.sync_fd

    def sync_fd(spool: spool_module.Spool, fd: int) -> None:
        synced.append(fd)
        real_sync_fd(spool, fd)

    monkeypatch.setattr(spool_module.Spool, "sync_fd", sync_fd)
    handle = receiver_on(db, settings.model_copy(update={"write_ahead_kb": 0}))
    _receive_series(handle, 3)
    assert _committed_bytes(db) == {}
    assert len(synced) == 3  # each file's own flush, the steady state's too


def test_unset_it_is_on_for_sqlite_and_off_for_postgresql(
    db: Database, settings: Settings, receiver_on: StartReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL measured no faster with it, and it would put image bytes in the server's WAL
    and on every standby: unset, only SQLite commits small files' bytes."""
    monkeypatch.setattr(write_ahead, "SYNC_INTERVAL_S", 3600.0)
    handle = receiver_on(db, settings.model_copy(update={"write_ahead_kb": None}))
    _receive_series(handle, 3)
    assert len(_committed_bytes(db)) == (2 if db.sqlite else 0)  # the first took the general path


def test_the_bulk_sync_leaves_another_hosts_rows(
    db: Database, receiver_on: StartReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a spool several hosts share, a file another host wrote sits in that host's page cache:
    this host's sync does not cover it, so its row stays (for that host, or a restart's
    recovery)."""
    monkeypatch.setattr(write_ahead, "SYNC_INTERVAL_S", 3600.0)
    handle = receiver_on(db)
    _receive_series(handle, 3)
    with db.write() as session:
        first = session.scalar(select(func.min(UnsyncedFile.id)))
        session.execute(
            update(UnsyncedFile).where(UnsyncedFile.id == first).values(writer="h-other-host")
        )
    assert handle.committer.bulk_syncer is not None
    assert handle.committer.bulk_syncer.sync_now() == 1
    assert len(_committed_bytes(db)) == 1


def test_a_failed_bulk_sync_is_tried_again_without_new_commits(
    db: Database, receiver_on: StartReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sync = write_ahead.sync_filesystem
    failures: list[bool] = []

    def failing_once(path: Path) -> None:
        if not failures:
            failures.append(True)
            raise OSError(5, "Input/output error", str(path))
        real_sync(path)

    monkeypatch.setattr(write_ahead, "sync_filesystem", failing_once)
    monkeypatch.setattr(write_ahead, "SYNC_INTERVAL_S", 0.05)
    handle = receiver_on(db)
    _receive_series(handle, 3)  # then nothing more arrives
    deadline = time.monotonic() + 10
    while _committed_bytes(db) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert failures, "the sync never failed: the test did not test the retry"
    assert _committed_bytes(db) == {}


def test_the_bulk_sync_deletes_in_short_transactions(
    db: Database, receiver_on: StartReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second's rows deleted at once held SQLite's write lock for 35-90 ms, and every commit
    waited meanwhile: the rows go ``DELETE_CHUNK`` at a time."""
    monkeypatch.setattr(write_ahead, "SYNC_INTERVAL_S", 3600.0)
    monkeypatch.setattr(write_ahead, "DELETE_CHUNK", 2)
    handle = receiver_on(db)
    _receive_series(handle, 6)  # 5 rows: the first of the series took the general path
    deletes: list[int] = []

    def count(_conn, cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("DELETE FROM UNSYNCED_FILES"):
            deletes.append(cursor.rowcount)

    event.listen(db.engine, "after_cursor_execute", count)
    try:
        assert handle.committer.bulk_syncer is not None
        assert handle.committer.bulk_syncer.sync_now() == 5
    finally:
        event.remove(db.engine, "after_cursor_execute", count)
    assert deletes == [2, 2, 1]
    assert _committed_bytes(db) == {}


def test_the_bulk_sync_keeps_the_rows_committed_while_it_syncs(
    db: Database, receiver_on: StartReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row committed after the sync began names a file the sync may have missed: it stays."""
    monkeypatch.setattr(write_ahead, "SYNC_INTERVAL_S", 3600.0)
    monkeypatch.setattr(write_ahead, "DELETE_CHUNK", 2)
    handle = receiver_on(db)
    _receive_series(handle, 4)
    before = set(_committed_bytes(db))
    real_sync = write_ahead.sync_filesystem

    def receiving_meanwhile(path: Path) -> None:
        real_sync(path)
        _receive_series(handle, 3)  # a new series: its first instance takes the general path

    monkeypatch.setattr(write_ahead, "sync_filesystem", receiving_meanwhile)
    assert handle.committer.bulk_syncer is not None
    assert handle.committer.bulk_syncer.sync_now() == len(before) == 3
    left = set(_committed_bytes(db))
    assert len(left) == 2 and not left & before


def test_the_bulk_sync_keeps_rows_committed_after_a_deletion_while_it_syncs(
    db: Database, receiver_on: StartReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study deleted while the sync runs takes its rows with it, the newest included; the rows
    committed after that must not take their numbers and be deleted as covered by the sync (on
    SQLite a table's row ids are reused once the highest is gone, unless AUTOINCREMENT)."""
    monkeypatch.setattr(write_ahead, "SYNC_INTERVAL_S", 3600.0)
    handle = receiver_on(db)
    _receive_series(handle, 4)
    assert len(_committed_bytes(db)) == 3
    real_sync = write_ahead.sync_filesystem

    def deleting_and_receiving_meanwhile(path: Path) -> None:
        real_sync(path)
        with db.write() as session:  # the admin deletes the study just received ...
            session.execute(delete(Study))
        _receive_series(handle, 3)  # ... while another series arrives: two rows to sync

    monkeypatch.setattr(write_ahead, "sync_filesystem", deleting_and_receiving_meanwhile)
    assert handle.committer.bulk_syncer is not None
    handle.committer.bulk_syncer.sync_now()
    assert len(_committed_bytes(db)) == 2, "rows the sync did not cover were deleted"


def test_the_bulk_sync_takes_turns_with_the_commits(
    db: Database, receiver_on: StartReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite the delete waits for a committer's turn (and a committer for the delete's), on
    a file lock that wakes the waiter at once, not in SQLite's sleeping busy handler."""
    if not db.sqlite:
        pytest.skip("PostgreSQL takes row locks: no turns")
    monkeypatch.setattr(write_ahead, "SYNC_INTERVAL_S", 3600.0)
    handle = receiver_on(db)
    _receive_series(handle, 3)
    syncer = handle.committer.bulk_syncer
    assert syncer is not None
    turn = WriterTurns(db)
    deleted: list[int] = []
    try:
        with turn:  # a committer's turn
            worker = threading.Thread(target=lambda: deleted.append(syncer.sync_now()))
            worker.start()
            worker.join(0.5)
            assert worker.is_alive() and len(_committed_bytes(db)) == 2  # waiting for the turn
        worker.join(10)
    finally:
        turn.close()
    assert deleted == [2] and _committed_bytes(db) == {}


def test_rows_waiting_for_the_bulk_sync_survive_the_schema_upgrade(
    db: Database, receiver_on: StartReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migrations 0008 and 0009 rebuild ``unsynced_files`` and ``studies`` on SQLite
    (AUTOINCREMENT), down and up again through the node's own engine (``schema_change``): the
    rows of an unclean stop, the only copy of those files' bytes, hang from their study by ON
    DELETE CASCADE, and are still there for recovery afterwards."""
    from alembic import command

    from node.db.engine import alembic_config, schema_change

    unsynced = _received_before_a_power_cut(db, receiver_on, monkeypatch, 3)
    with schema_change(db.engine) as conn:
        cfg = alembic_config(db.url, conn)
        command.downgrade(cfg, "0007_unsynced_files")
        command.upgrade(cfg, "head")
    assert _committed_bytes(db) == unsynced
