"""Small received instances: their bytes committed with their rows, their files synced in bulk.

A durable small instance used to cost three device flushes before its success status: its file's
``fdatasync``, its directory's fsync and the database commit. For a 64x64 image that was most of
the receiver's time at one association (docs/performance.md §4). Here a data set of at most
``write_ahead_kb`` (setting; unset, 64 KiB on SQLite and off on PostgreSQL: ``write_ahead_limit``)
of a series already recorded is written to its final name *without* a sync, and its bytes are
inserted (table ``unsynced_files``) in the same transaction as its instance row, so the group's
one commit makes both durable: a database write-ahead log for the file. ``BulkSyncer`` then syncs
the file system once a second (``syncfs``: every file written since, one flush) and deletes the
rows it covered. ``recover_unsynced`` runs when a receiver starts: each row still there names a
file that may have lost its bytes in a crash, and every such file is written again from the row.

The promise is unchanged — 0x0000 only once the bytes and the row survive a power cut — and a
deleted instance is never brought back: its ``unsynced_files`` row goes with it (foreign key,
``ON DELETE CASCADE``), so recovery finds nothing to restore.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import threading
import time
from pathlib import Path

from sqlalchemy import ColumnElement, delete, func, select

from core.config import Settings
from node.db.engine import Database
from node.db.orm import Instance, UnsyncedFile
from node.ingest.spool import Spool, fsync_dir, temp_owner
from node.ingest.writer_turns import WriterTurns

log = logging.getLogger(__name__)

SQLITE_DEFAULT_KB = 64  # write_ahead_kb when unset, on SQLite
SYNC_INTERVAL_S = 1.0  # how long a file may stay unsynced (its bytes are in the database)
SYNC_BYTES = 32 << 20  # or until this many bytes wait, whichever comes first
_RECOVER_CHUNK = 200
DELETE_CHUNK = 64  # covered rows deleted per transaction (``BulkSyncer._delete_covered``)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def write_ahead_limit(settings: Settings, db: Database) -> int:
    """The size in bytes up to which a received data set's bytes go into its commit; 0: off.

    ``write_ahead_kb`` when set. Unset, 64 KiB on SQLite, where it measured 1.65x the rate over
    one association, and off on PostgreSQL, where it measured no faster (404.8 against 430.4
    instances/s) and would put image bytes in the server's WAL and on every standby
    (docs/performance.md §4). Off without ``fsync``: nothing is synced, so nothing to defer."""
    if not settings.fsync:
        return 0
    kb = settings.write_ahead_kb
    if kb is None:
        kb = SQLITE_DEFAULT_KB if db.sqlite else 0
    return kb << 10


def sync_filesystem(path: Path) -> None:
    """Flush every dirty file and directory of the file system holding ``path`` (``syncfs``):
    one call for all the files written since the last one. Raises OSError when it fails."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs = getattr(_libc, "syncfs", None)
        if syncfs is None:  # not Linux: sync everything
            os.sync()
        elif syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), str(path))
    finally:
        os.close(fd)


class BulkSyncer:
    """Syncs the spool's file system every ``interval_s`` (sooner past ``max_bytes``) while
    write-ahead rows wait, then deletes the rows that sync covered. Its own thread: a committer
    never waits for it."""

    def __init__(self, db: Database, spool: Spool) -> None:
        self.db = db
        self.spool = spool
        self.interval_s = SYNC_INTERVAL_S  # read here: tests patch the module's values
        self.max_bytes = SYNC_BYTES
        self.syncs = 0  # bulk syncs done (tests, stats)
        self._turns = WriterTurns(db)  # its own open lock file: see writer_turns
        self._lock = threading.Lock()
        self._waiting_bytes = 0
        self._due = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> BulkSyncer:
        self._thread = threading.Thread(target=self._run, name="bulk-sync", daemon=True)
        self._thread.start()
        return self

    def committed(self, nbytes: int) -> None:
        """A commit added ``nbytes`` of write-ahead rows."""
        with self._lock:
            self._waiting_bytes += nbytes
            if self._waiting_bytes >= self.max_bytes:
                self._due.set()

    def stop(self, final_sync: bool = True) -> None:
        """Stop the thread and sync what is left: a clean stop leaves no rows behind (tests pass
        ``final_sync=False`` for a power cut)."""
        self._stopping = True
        self._due.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if final_sync:
            self.sync_now()
        self._turns.close()

    def _run(self) -> None:
        while not self._stopping:
            self._due.wait(self.interval_s)
            self._due.clear()
            if self._stopping:
                return
            with self._lock:
                waiting = self._waiting_bytes
            if waiting:
                self.sync_now()

    def sync_now(self) -> int:
        """Sync the file system, then delete this host's rows committed before it began; the
        number of rows deleted (0 when the sync failed: the rows stay, and recovery still has
        them). Another host's rows name files in that host's page cache (a shared spool): its own
        bulk sync, or a receiver start after its crash, clears them."""
        with self._lock:
            self._waiting_bytes = 0
        mine = UnsyncedFile.writer == temp_owner()
        try:
            with self.db.read() as session:
                last = session.scalar(select(func.max(UnsyncedFile.id)).where(mine))
            if last is None:
                return 0
            # every row up to ``last`` was committed after its file was written: the sync covers it
            sync_filesystem(self.spool.data_dir)
            deleted = self._delete_covered(mine, last)
            self.syncs += 1
            return deleted
        except Exception as exc:  # noqa: BLE001 - a thread: log, keep the rows, try again later
            log.error("bulk sync of the spool failed (rows kept for recovery): %s", exc)
            with self._lock:  # the next round tries again, new commits or not
                self._waiting_bytes = max(self._waiting_bytes, 1)
            return 0

    def _delete_covered(self, mine: ColumnElement[bool], last: int) -> int:
        """Delete this host's rows (``mine``) up to ``last``, ``DELETE_CHUNK`` rows per transaction, each
        on a turn it takes with the receiver's committers (``WriterTurns``), and as long again
        between chunks for them.

        Why: a second's rows (~1,000 at one association) deleted in one transaction held
        SQLite's write lock for 35-90 ms (each row's page rewritten, its overflow pages freed),
        and a commit meanwhile waited that long, sleeping in SQLite's busy handler (1, 2, 5, 10
        ... ms between tries) past the end: the receiver's slowest acknowledgements. A committer
        now waits for one chunk, woken as soon as it ends (docs/performance.md §4)."""
        with self.db.read() as session:
            ids = session.scalars(
                select(UnsyncedFile.id)
                .where(mine, UnsyncedFile.id <= last)
                .order_by(UnsyncedFile.id)
            ).all()
        deleted = 0
        for start in range(0, len(ids), DELETE_CHUNK):
            first, final = ids[start], ids[min(start + DELETE_CHUNK, len(ids)) - 1]
            with self._turns:
                began = time.perf_counter()
                with self.db.write() as session:
                    result = session.execute(
                        delete(UnsyncedFile).where(
                            mine, UnsyncedFile.id >= first, UnsyncedFile.id <= final
                        )
                    )
                held = time.perf_counter() - began
            deleted += int(result.rowcount or 0)  # type: ignore[attr-defined]
            if start + DELETE_CHUNK < len(ids):
                time.sleep(held)
        return deleted


def recover_unsynced(db: Database, spool: Spool) -> int:
    """After an unclean stop: write again, from its committed bytes, every file still waiting for
    the bulk sync, then clear those rows. The number of files a crash had damaged (they differed).

    Every file is rewritten (a synced temp file renamed over the name, its directory fsynced), not
    only those that differ: one that reads back right may still sit unsynced in a page cache —
    another host's, when the spool is shared. Only the rows rewritten here are deleted; a row a
    running receiver commits meanwhile stays for its own bulk sync. Runs before a receiver accepts
    associations; several may run it at once (the same bytes either way). After a crash there
    are at most a second's worth of small files."""
    damaged = 0
    last = 0
    directories: set[Path] = set()
    while True:
        with db.read() as session:
            rows = session.execute(
                select(UnsyncedFile.id, Instance.path, UnsyncedFile.data)
                .join(Instance, Instance.sop_instance_uid == UnsyncedFile.sop_instance_uid)
                .where(UnsyncedFile.id > last)
                .order_by(UnsyncedFile.id)
                .limit(_RECOVER_CHUNK)
            ).all()
        if not rows:
            break
        for row_id, relative, data in rows:
            last = row_id
            final = spool.data_dir / relative
            damaged += not _holds(final, data)
            temp, _ = spool.write_temp(relative, [data])  # synced
            os.replace(temp, final)
            directories.add(final.parent)
    for directory in directories:
        fsync_dir(directory)
    if last:
        with db.write() as session:
            session.execute(delete(UnsyncedFile).where(UnsyncedFile.id <= last))
    if damaged:
        log.warning("restored %d received file(s) from the database after an unclean stop",
                    damaged)  # fmt: skip
    return damaged


def _holds(path: Path, data: bytes) -> bool:
    """Whether the file at ``path`` has exactly ``data``."""
    with contextlib.suppress(OSError):
        if path.stat().st_size == len(data):
            return path.read_bytes() == data
    return False
