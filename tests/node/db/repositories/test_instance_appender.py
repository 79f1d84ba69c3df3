"""The receiver's steady-state writer: the rows upsert_instances would write, or nothing at all."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from core.domain import Association, LateArrivalPolicy, StudyState
from node.db import notify
from node.db.engine import Database
from node.db.orm import Instance, Series, Study
from node.db.repositories.instance_appender import InstanceAppender
from node.db.repositories.instances import NewInstance, upsert_instances
from node.ingest.header import parse_instance
from tests.node.ingest.helpers import make_instance

SENDER = Association(calling_ae="MODALITY", called_ae="PACSNODE", peer_host="127.0.0.1")


def _item(study: str, series: str, number: int, sop: str | None = None) -> NewInstance:
    raw = make_instance(study_uid=study, series_uid=series, sop_uid=sop, instance_number=number)
    header = parse_instance(raw).header
    return NewInstance(header, SENDER, f"spool/{study}/{series}/{header.sop_instance_uid}.dcm",
                       len(raw))  # fmt: skip


@pytest.fixture
def appender(db: Database) -> Iterator[InstanceAppender]:
    writer = InstanceAppender(db)
    yield writer
    writer.close()


def _upsert(db: Database, items: list[NewInstance]) -> None:
    with db.write() as session:
        upsert_instances(session, items, LateArrivalPolicy.REPROCESS)


def test_appended_rows_are_the_rows_upsert_writes(db: Database, appender: InstanceAppender) -> None:
    study, series = generate_uid(), generate_uid()
    _upsert(db, [_item(study, series, 1)])
    added = [_item(study, series, 2), _item(study, series, 3)]
    assert appender.append(added)
    _upsert(db, [_item(study, series, 4)])
    with db.read() as session:
        rows = session.scalars(select(Instance).order_by(Instance.instance_number)).all()
        assert [r.instance_number for r in rows] == [1, 2, 3, 4]
        general, fast = rows[0], rows[1]
        # size_bytes too: each instance has its own random SOP UID, whose length varies
        skip = {"_sa_instance_state", "id", "sop_instance_uid", "instance_number", "path",
                "received_at", "size_bytes"}  # fmt: skip
        assert {k: v for k, v in vars(fast).items() if k not in skip} == {
            k: v for k, v in vars(general).items() if k not in skip
        }
        assert fast.path == added[0].path
        assert [r.size_bytes for r in rows[1:3]] == [item.size_bytes for item in added]
        assert fast.received_at.tzinfo is not None and fast.received_at >= general.received_at
        study_row = session.scalars(select(Study)).one()
        assert (study_row.instance_count, study_row.modalities) == (4, "CT")
        assert session.scalars(select(Series)).one().instance_count == 4


@pytest.mark.parametrize("case", ["new series", "duplicate", "twice in the group", "late arrival"])
def test_anything_but_the_steady_state_writes_nothing(
    db: Database, appender: InstanceAppender, case: str
) -> None:
    study, series = generate_uid(), generate_uid()
    first = _item(study, series, 1)
    _upsert(db, [first])
    group = {
        "new series": [_item(study, generate_uid(), 2)],
        "duplicate": [_item(study, series, 2), _item(study, series, 3, first.header.sop_instance_uid)],
        "twice in the group": [_item(study, series, 2, sop := generate_uid()), _item(study, series, 3, sop)],
        "late arrival": [_item(study, series, 2)],
    }[case]  # fmt: skip
    if case == "late arrival":
        with db.write() as session:
            session.scalars(select(Study)).one().state = StudyState.PROCESSED.value
    assert not appender.append(group)
    with db.read() as session:
        assert len(session.scalars(select(Instance)).all()) == 1
        assert session.scalars(select(Study)).one().instance_count == 1
    assert appender.append([_item(study, series, 9)]) is (case != "late arrival")


class _CountingConnection:
    """The appender's DBAPI connection, counting the statements sent (each a round trip)."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.statements = conn, 0

    def cursor(self) -> Any:
        cursor, outer = self.conn.cursor(), self

        class Counting:
            def __getattr__(self, name: str) -> Any:
                return getattr(cursor, name)

            def execute(self, *args: Any) -> Any:
                outer.statements += 1
                return cursor.execute(*args)

            def executemany(self, *args: Any) -> Any:
                outer.statements += 1
                return cursor.executemany(*args)

        return Counting()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_postgres_group_is_written_in_two_statements_and_wakes_listeners(
    db: Database, appender: InstanceAppender
) -> None:
    """On PostgreSQL every statement is a round trip to the server: the series lookup, then the
    rows, both counts and the wake-up of other processes in one statement (then the commit)."""
    if db.sqlite:
        pytest.skip("PostgreSQL only")
    study, series = generate_uid(), generate_uid()
    _upsert(db, [_item(study, series, 1)])
    channel = db.wakeups.pg_channel(notify.STUDIES)
    listener = psycopg.connect(
        db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
        autocommit=True,
    )
    try:
        listener.execute(f'LISTEN "{channel}"')
        counting = _CountingConnection(db.engine.raw_connection())
        appender._conn = counting
        assert appender.append([_item(study, series, 2), _item(study, series, 3)])
        assert counting.statements == 2
        assert [n.channel for n in listener.notifies(timeout=5, stop_after=1)] == [channel]
    finally:
        listener.close()
    with db.read() as session:
        assert session.scalars(select(Study)).one().instance_count == 3
        assert session.scalars(select(Series)).one().instance_count == 3
