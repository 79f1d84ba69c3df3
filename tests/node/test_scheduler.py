"""The completion sweep's wake-ups: on PostgreSQL an idle node is not queried every tick; received
instances (committed elsewhere) or the end of a quiet period make the next tick sweep. On SQLite
every tick sweeps, as before."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from core.config import Settings
from core.domain import Association, StoreStatus
from node.db.engine import Database
from node.db.orm import utcnow
from node.ingest.persist import persist_file
from node.scheduler import CompletionWakeups
from tests.conftest import postgres_schema_url
from tests.node.jobs.test_worker_wakeup import QueryCounter


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_schema_url()


def test_sqlite_sweeps_every_tick(settings: Settings, sqlite_db: Database) -> None:
    wakeups = CompletionWakeups(sqlite_db, settings)
    for _ in range(3):
        assert wakeups.due(utcnow())
        wakeups.swept()
    wakeups.close()


@pytest.mark.postgres
def test_idle_ticks_skip_the_database_until_instances_arrive_or_quiet_ends(
    settings: Settings, pg_url: str
) -> None:
    db, receiver = Database(pg_url), Database(pg_url)  # the receiver as another process has it
    db.migrate()
    try:
        wakeups = CompletionWakeups(db, settings)
        assert db.wakeups.wait_listening(10)
        time.sleep(0.3)
        assert wakeups.due(utcnow())  # first tick (and the listener's connect wake-up)
        wakeups.swept()
        counter = QueryCounter(db)
        assert not any(wakeups.due(utcnow()) for _ in range(20))  # idle ticks
        assert counter.count == 0
        counter.close()

        # a study starts arriving, through the receiver's own path (batched plain-SQL inserts)
        ct = Path(get_testdata_file("CT_small.dcm"))
        outcome = persist_file(receiver, settings, ct, Association("CT1", "PACSNODE"))
        assert outcome.status == StoreStatus.SUCCESS
        deadline = time.monotonic() + 2
        while not wakeups.due(utcnow()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        wakeups.swept()
        quiet = settings.completion.quiet_period_s
        assert not wakeups.due(utcnow() + timedelta(seconds=quiet - 2))  # still in its quiet period
        assert wakeups.due(utcnow() + timedelta(seconds=quiet + 1))  # quiet period over: sweep
        wakeups.close()
    finally:
        db.dispose()
        receiver.dispose()
