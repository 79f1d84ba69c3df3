"""One active scheduler per database: a PostgreSQL session advisory lock names the leader.

Two schedulers sweeping together would be harmless for jobs (a unique constraint) but not for
retention, Orthanc polling or re-publishing, so only the holder of the lock runs them; the others
stand by and retry every second. The lock lives as long as the holder's database session: a
leader that dies (even by SIGKILL) loses its connection, PostgreSQL releases the lock at once and a
standby takes over at its next try. SQLite is one process by construction: the lock is a no-op.
"""

from __future__ import annotations

import contextlib
import logging

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from node.db.engine import Database

log = logging.getLogger(__name__)

# pg_try_advisory_lock(int, int): this constant, and the hash of the schema the node's tables live
# in — advisory locks are per database, and one database may hold several nodes' schemas.
SCHEDULER_LOCK_KEY = 0x7061_6373  # b"pacs"
_LOCK = "pg_try_advisory_lock(:k, hashtext(current_schema()))"
_UNLOCK = "pg_advisory_unlock(:k, hashtext(current_schema()))"


class LeaderLock:
    """``try_acquire`` until it returns True; then ``still_held`` tells whether leadership holds."""

    def __init__(self, db: Database, key: int = SCHEDULER_LOCK_KEY) -> None:
        self.db = db
        self.key = key
        self._conn: Connection | None = None

    @property
    def held(self) -> bool:
        return self.db.sqlite or self._conn is not None

    def try_acquire(self) -> bool:
        if self.held:
            return True
        conn = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = bool(conn.scalar(text(f"SELECT {_LOCK}"), {"k": self.key}))
        except SQLAlchemyError:
            conn.close()
            raise
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    def still_held(self) -> bool:
        """False when the lock's connection broke (the database may already have a new leader)."""
        if self.db.sqlite:
            return True
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            log.warning("scheduler leadership lost: its database connection broke")
            self._drop()
            return False

    def release(self) -> None:
        if self._conn is None:
            return
        with contextlib.suppress(SQLAlchemyError):  # a broken connection took the lock with it
            self._conn.execute(text(f"SELECT {_UNLOCK}"), {"k": self.key})
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.invalidate()
                self._conn.close()
            self._conn = None
