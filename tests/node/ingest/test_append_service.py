"""The append service of a receiver pool on SQLite: groups that arrive together share one
transaction, a group that is not the steady state is refused alone, and a receiver whose service
is gone appends its own rows."""

from __future__ import annotations

import threading
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from core.config import Settings
from core.domain import Association, LateArrivalPolicy
from node.db.engine import Database
from node.db.orm import Instance, Series
from node.db.repositories.instance_appender import InstanceAppender
from node.db.repositories.instances import NewInstance, upsert_instances
from node.ingest.append_service import AppendServiceError, RemoteAppender, serve_appends
from node.ingest.header import parse_instance
from tests.node.ingest.helpers import make_instance

SENDER = Association(calling_ae="MODALITY", called_ae="PACSNODE", peer_host="127.0.0.1")


def _item(study: str, series: str, number: int) -> NewInstance:
    raw = make_instance(study_uid=study, series_uid=series, instance_number=number)
    header = parse_instance(raw).header
    return NewInstance(header, SENDER, f"spool/{study}/{series}/{header.sop_instance_uid}.dcm",
                       len(raw))  # fmt: skip


def _known_series(db: Database) -> tuple[str, str]:
    study, series = generate_uid(), generate_uid()
    with db.write() as session:
        upsert_instances(session, [_item(study, series, 1)], LateArrivalPolicy.REPROCESS)
    return study, series


def _numbers(db: Database, series: str) -> list[int]:
    with db.read() as session:
        return sorted(session.scalars(
            select(Instance.instance_number).join(Series)
            .where(Series.series_instance_uid == series)
        ))  # fmt: skip


def test_groups_sent_together_are_answered_each(sqlite_db: Database, settings: Settings) -> None:
    study, series = _known_series(sqlite_db)
    ends: list[tuple[Connection, Connection]] = [Pipe() for _ in range(3)]
    # sent before the service reads: it takes all three in one round and merges them
    ends[0][0].send(([_item(study, series, 2), _item(study, series, 3)], []))
    written_ahead = _item(study, series, 4)  # its file's bytes committed with its row
    unsynced = [(written_ahead.header.sop_instance_uid, b"bytes", "host:boot")]
    ends[1][0].send(([written_ahead], unsynced))
    ends[2][0].send(([_item(generate_uid(), generate_uid(), 1)], []))  # a new series
    service = threading.Thread(target=serve_appends, args=(settings, [b for _, b in ends]))
    service.start()
    try:
        replies = [a.recv() for a, _ in ends]
    finally:
        for a, _ in ends:
            a.close()
        service.join(10)
    assert replies == [True, True, False]  # the new series takes the receiver's general path
    assert not service.is_alive()  # every receiver closed its pipe: the service ended
    assert _numbers(sqlite_db, series) == [1, 2, 3, 4]
    with sqlite_db.read() as session:
        assert session.scalar(select(Series.instance_count)
                              .where(Series.series_instance_uid == series)) == 4  # fmt: skip


def test_groups_of_two_receivers_share_one_transaction(
    sqlite_db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, series = _known_series(sqlite_db)
    transactions: list[int] = []
    real_append = InstanceAppender.append

    def counting(self: InstanceAppender, items: Any, unsynced: Any = ()) -> bool:
        transactions.append(len(items))
        return real_append(self, items, unsynced)

    monkeypatch.setattr(InstanceAppender, "append", counting)
    ends: list[tuple[Connection, Connection]] = [Pipe() for _ in range(2)]
    ends[0][0].send(([_item(study, series, 2)], []))
    ends[1][0].send(([_item(study, series, 3), _item(study, series, 4)], []))
    service = threading.Thread(target=serve_appends, args=(settings, [b for _, b in ends]))
    service.start()
    try:
        assert [a.recv() for a, _ in ends] == [True, True]
    finally:
        for a, _ in ends:
            a.close()
        service.join(10)
    assert transactions == [3]
    assert _numbers(sqlite_db, series) == [1, 2, 3, 4]


def test_a_receiver_appends_itself_once_the_service_is_gone(
    sqlite_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    study, series = _known_series(sqlite_db)
    mine, services = Pipe()
    services.close()  # the service died
    appender = RemoteAppender(mine, InstanceAppender(sqlite_db))
    try:
        with pytest.raises(AppendServiceError):  # the group in flight: the general path decides
            appender.append([_item(study, series, 2)])
        assert "append service gone" in caplog.text
        assert appender.append([_item(study, series, 3)])  # from now on, by itself
    finally:
        appender.close()
    assert _numbers(sqlite_db, series) == [1, 3]


def test_a_receiver_alone_in_the_pool_appends_itself(sqlite_db: Database) -> None:
    """No other receiver holds a connection: no round trip to the service (its latency cost a
    2-process pool a quarter of its rate over one association)."""
    study, series = _known_series(sqlite_db)
    mine, services = Pipe()
    alone = [True]
    appender = RemoteAppender(mine, InstanceAppender(sqlite_db), lambda: alone[0])
    try:
        assert appender.append([_item(study, series, 2)])
        assert not services.poll()  # nothing was sent
        alone[0] = False  # another receiver has associations now: the service appends
        services.send(True)  # its reply, queued before the request
        assert appender.append([_item(study, series, 3)])
        assert services.poll() and services.recv()[0][0].header.instance_number == 3
    finally:
        appender.close()
        services.close()
    assert _numbers(sqlite_db, series) == [1, 2]  # the "service" here wrote nothing
