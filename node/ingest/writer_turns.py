"""Turns on SQLite's write lock for the receiver's writers, on a file lock beside the database.

Writers that meet in SQLite's write lock wait in its busy handler, which sleeps 1, 2, 5, 10 ...
ms between tries: one that finds another writing loses several commits' time. Writers that take
turns on a ``flock`` first are woken as soon as it is free. The receiver's committers take turns
(the processes of a pool, and their append service), and so does the bulk sync's delete of the
write-ahead rows (``write_ahead.BulkSyncer``). Each holder opens the lock file itself: a ``flock``
belongs to an open file, so two threads sharing one would both hold it. PostgreSQL needs none
(row locks)."""

from __future__ import annotations

import fcntl
import os

from node.db.engine import Database


class WriterTurns:
    """A turn on the database's write lock (see the module doc); a no-op but on a SQLite file."""

    def __init__(self, db: Database) -> None:
        self._fd: int | None = None
        path = db.engine.url.database if db.sqlite else None
        if path and path != ":memory:":
            self._fd = os.open(f"{path}-receivers.lock", os.O_RDWR | os.O_CREAT, 0o644)

    def __enter__(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *_exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
