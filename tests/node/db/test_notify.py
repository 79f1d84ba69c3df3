"""Wake-up channels (node/db/notify.py): a committed queued job or pending delivery wakes waiters,
a rolled-back one does not; on PostgreSQL through NOTIFY to another connection's LISTEN, which
survives its connection being terminated."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from node.db import notify
from node.db.engine import Database
from node.db.orm import Job, Study, utcnow
from tests.conftest import POSTGRES_URL, postgres_schema_url


def add_job(db: Database, name: str, *, rollback: bool = False) -> None:
    """A queued job (and its study) in one transaction, committed or rolled back."""
    session = db.write_session_factory()
    try:
        study = Study(study_instance_uid=f"9.{name}", last_received_at=utcnow())
        session.add(study)
        session.flush()
        session.add(Job(study_pk=study.id, pipeline_name=name, next_attempt_at=utcnow()))
        session.flush()
        if rollback:
            session.rollback()
        else:
            session.commit()
    finally:
        session.close()


def settled(db: Database, channel: str) -> notify.Waker:
    """A waker past the one wake-up a PostgreSQL listener gives everyone when it connects."""
    waker = db.wakeups.subscribe(channel)
    if db.wakeups.postgres:
        assert db.wakeups.wait_listening(10)
        time.sleep(0.2)
        waker.event.clear()
    return waker


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_schema_url()


def test_channel_names_carry_the_schema_of_the_url() -> None:
    url = make_url("postgresql+psycopg://u@h/db?options=-csearch_path%3Dt_abc123")
    assert notify.namespace_of(url) == "t_abc123"
    assert notify.channel_name(notify.JOBS, "t_abc123") == "pacsnode_jobs_t_abc123"
    assert notify.namespace_of(make_url("postgresql+psycopg://u@h/db")) == ""
    assert notify.channel_name(notify.JOBS, "") == "pacsnode_jobs"


def test_a_commit_wakes_waiters_in_the_same_process_and_a_rollback_does_not(db: Database) -> None:
    jobs = settled(db, notify.JOBS)
    deliveries = settled(db, notify.DELIVERIES)
    add_job(db, "rolled-back", rollback=True)
    assert not jobs.event.is_set()
    add_job(db, "committed")
    assert jobs.event.is_set()
    assert not deliveries.event.is_set()  # only the channel of what was committed
    jobs.close()
    deliveries.close()


def test_waiter_sleeps_until_due_then_returns_and_stops_on_stop(db: Database) -> None:
    waker = settled(db, notify.JOBS)
    stop = threading.Event()
    t0 = time.monotonic()
    assert not waker.wait(stop, due_in_s=0.3, poll_s=10, safety_s=10)
    assert 0.25 <= time.monotonic() - t0 < 2
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    assert not waker.wait(stop, due_in_s=None, poll_s=30, safety_s=30)
    assert time.monotonic() - t0 < 2  # a stop is seen within STOP_CHECK_S
    waker.close()


@pytest.mark.postgres
def test_notify_reaches_another_connection_only_on_commit(pg_url: str) -> None:
    listener, producer = Database(pg_url), Database(pg_url)  # two engines, two hubs
    producer.migrate()
    try:
        waker = listener.wakeups.subscribe(notify.JOBS)
        assert listener.wakeups.wait_listening(10)
        waker.wait(threading.Event(), due_in_s=1, poll_s=1, safety_s=1)  # the connect wake-up
        waker.event.clear()
        add_job(producer, "rolled-back", rollback=True)
        assert not waker.event.wait(1.0)
        t0 = time.monotonic()
        add_job(producer, "committed")
        assert waker.event.wait(5)
        assert time.monotonic() - t0 < 0.5
    finally:
        listener.dispose()
        producer.dispose()


@pytest.mark.postgres
def test_listen_connection_reconnects_after_being_terminated(pg_url: str) -> None:
    listener, producer = Database(pg_url), Database(pg_url)
    producer.migrate()
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        hub = listener.wakeups
        waker = hub.subscribe(notify.JOBS)
        assert hub.wait_listening(10)
        first_pid = hub.backend_pid
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": first_pid}).scalar()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (
            hub.backend_pid in (None, first_pid) or not hub.listening
        ):
            time.sleep(0.05)
        assert hub.listening and hub.backend_pid not in (None, first_pid)
        assert hub.reconnects >= 1
        waker.event.clear()
        t0 = time.monotonic()
        add_job(producer, "after-reconnect")
        assert waker.event.wait(5)
        assert time.monotonic() - t0 < 0.5
    finally:
        admin.dispose()
        listener.dispose()
        producer.dispose()
