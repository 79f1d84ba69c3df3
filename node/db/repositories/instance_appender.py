"""The receiver's hot path: add a group of instances to series the database already knows.

:func:`~node.db.repositories.instances.upsert_instances` decides all study bookkeeping (new
studies and series, duplicates, late arrivals, audit) through SQLAlchemy; on small instances its
~1 ms of statement building per group was most of the receiver's CPU (docs/performance.md §4).
This module covers only the steady state that nearly every instance of a series is in: its series
already has a row, its study is receiving (not a late arrival), and no copy of it is recorded.
For that it runs four plain statements on one persistent DBAPI connection, the instance rows in one
``executemany``. Anything else (a new series, a late arrival, a copy already recorded — told by
the insert's row count) makes :meth:`InstanceAppender.append` roll back and return False, nothing
written, and the caller takes ``upsert_instances``. Row values come from the same
``_instance_values`` and ``_merge_modalities``, so both paths write identical rows.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from node.db import notify
from node.db.engine import Database
from node.db.orm import Instance, utcnow
from node.db.repositories.instances import (
    _LATE_STATES,
    NewInstance,
    _instance_values,
    _merge_modalities,
)

log = logging.getLogger(__name__)

_SERIES = (
    "SELECT r.series_instance_uid, r.id, s.id, s.study_instance_uid, s.state, s.modalities "
    "FROM series r JOIN studies s ON s.id = r.study_pk WHERE r.series_instance_uid IN ({marks}) "
    "ORDER BY s.study_instance_uid"
)
_COUNT_SERIES = (
    "UPDATE series SET instance_count = instance_count + ?, last_received_at = ? WHERE id = ?"
)
_COUNT_STUDY = (
    "UPDATE studies SET instance_count = instance_count + ?, last_received_at = ?, "
    "modalities = ? WHERE id = ?"
)

_UNSYNCED = "INSERT INTO unsynced_files (sop_instance_uid, data, writer) VALUES (?, ?, ?)"


class InstanceAppender:
    """One persistent DBAPI connection that appends instance rows in groups (one per committer)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.postgres = not db.sqlite
        self._conn: Any = None  # the pool's connection, held for the appender's life
        processor = Instance.__table__.c.received_at.type.bind_processor(db.engine.dialect)
        self._bind_time: Callable[[Any], Any] = processor or (lambda value: value)
        self._insert: dict[tuple[str, ...], str] = {}
        self.appended = 0  # groups committed here (the rest went to upsert_instances)

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s") if self.postgres else text

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self.db.engine.raw_connection()
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def append(
        self, items: Sequence[NewInstance], unsynced: Sequence[tuple[str, bytes, str]] = ()
    ) -> bool:
        """Record ``items`` and commit; True when done. False when the group is not the steady
        state: nothing was written. A database error rolls back and propagates.

        Files are durable already, except those in ``unsynced`` ((SOP Instance UID, the file's
        bytes, writer)), whose bytes are committed with their rows (``node.ingest.write_ahead``)."""
        if not items:
            return False
        conn = self._connection()
        cursor = conn.cursor()
        done = False
        try:
            if not self.postgres:
                cursor.execute("BEGIN IMMEDIATE")
            done = self._write(cursor, items)
            if done and unsynced:
                cursor.executemany(self._sql(_UNSYNCED), list(unsynced))
            if done:
                conn.commit() if self.postgres else cursor.execute("COMMIT")
                self.appended += 1
        except BaseException:
            self._rollback(conn, cursor)
            raise
        finally:
            with contextlib.suppress(Exception):
                cursor.close()
        if not done:
            self._rollback(conn, None)
            return False
        self.db.wakeups.fire((notify.STUDIES,))  # the completion sweep may have work now
        return True

    def _rollback(self, conn: Any, cursor: Any) -> None:
        try:
            if self.postgres:
                conn.rollback()
            else:
                (cursor or conn).execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - no transaction open, or the connection is gone
            with contextlib.suppress(Exception):
                conn.invalidate()
            self._conn = None

    def _write(self, cursor: Any, items: Sequence[NewInstance]) -> bool:
        uids = {i.header.sop_instance_uid for i in items}
        if len(uids) != len(items):
            return False
        series_uids = sorted({i.header.series_instance_uid for i in items})
        query = _SERIES.format(marks=", ".join("?" * len(series_uids)))
        if self.postgres:
            query += " FOR UPDATE OF s"  # the order upsert_instances locks studies in
        cursor.execute(self._sql(query), series_uids)
        series = {row[0]: row[1:] for row in cursor.fetchall()}
        now = utcnow()
        rows: list[dict[str, Any]] = []
        study_modalities: dict[int, list[str]] = {}
        studies: dict[int, str] = {}
        for item in items:
            known = series.get(item.header.series_instance_uid)
            if known is None:
                return False
            series_pk, study_pk, study_uid, state, modalities = known
            if study_uid != item.header.study_instance_uid or state in _LATE_STATES:
                return False
            rows.append(_instance_values(item, series_pk, now))
            studies[study_pk] = modalities
            study_modalities.setdefault(study_pk, []).append(item.header.modality)
        when = self._bind_time(now)
        for row in rows:
            row["received_at"] = when
        columns = tuple(rows[0])
        if self.postgres:
            return self._write_postgres(cursor, columns, rows, studies, study_modalities, when)
        insert = self._insert.get(columns)
        if insert is None:
            insert = self._insert[columns] = self._sql(
                f"INSERT INTO instances ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))}) "
                "ON CONFLICT (sop_instance_uid) DO NOTHING"
            )
        cursor.executemany(insert, [tuple(row[c] for c in columns) for row in rows])
        if cursor.rowcount != len(rows):  # a copy is recorded already: upsert_instances decides
            return False
        per_series = Counter(row["series_pk"] for row in rows)
        cursor.executemany(self._sql(_COUNT_SERIES),
                           [(n, when, pk) for pk, n in per_series.items()])  # fmt: skip
        cursor.executemany(self._sql(_COUNT_STUDY), [
            (len(added), when, _merge_modalities(studies[pk], added), pk)
            for pk, added in study_modalities.items()
        ])  # fmt: skip
        return True

    def _write_postgres(self, cursor: Any, columns: tuple[str, ...], rows: list[dict[str, Any]],
                        studies: dict[int, str], study_modalities: dict[int, list[str]],
                        when: Any) -> bool:  # fmt: skip
        """The insert, both counts and the wake-up in one statement (one round trip instead of
        four; each is a scheduling wait for the server). The counts follow the rows really
        inserted; when that is fewer than ``rows`` (a copy is recorded) the caller rolls back."""
        marks = ", ".join(["%s"] * len(columns))
        study_marks = ", ".join(["(%s::bigint, %s::bigint, %s::text)"] * len(study_modalities))
        statement = (
            f"WITH ins AS (INSERT INTO instances ({', '.join(columns)}) "
            f"VALUES {', '.join([f'({marks})'] * len(rows))} "
            "ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING series_pk), "
            "per_series AS (SELECT series_pk, count(*) AS n FROM ins GROUP BY series_pk), "
            "counted AS (UPDATE series SET instance_count = series.instance_count + per_series.n, "
            "last_received_at = %s FROM per_series WHERE series.id = per_series.series_pk "
            "RETURNING 1), "
            "studied AS (UPDATE studies SET instance_count = studies.instance_count + d.n, "
            f"last_received_at = %s, modalities = d.m FROM (VALUES {study_marks}) AS d (pk, n, m) "
            "WHERE studies.id = d.pk RETURNING 1) "
            "SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM counted), "
            "(SELECT count(*) FROM studied), pg_notify(%s, '')"
        )
        params: list[Any] = [row[c] for row in rows for c in columns]
        params.append(when)
        params.append(when)
        for pk, added in study_modalities.items():
            params.extend((pk, len(added), _merge_modalities(studies[pk], added)))
        params.append(self.db.wakeups.pg_channel(notify.STUDIES))
        cursor.execute(statement, params)
        inserted = cursor.fetchone()[0]
        return bool(inserted == len(rows))
