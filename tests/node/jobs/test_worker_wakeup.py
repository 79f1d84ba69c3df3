"""An idle local-engine worker does not poll: on PostgreSQL it sleeps on LISTEN and a job committed
by another process starts within milliseconds; after its LISTEN connection is terminated it
reconnects and keeps starting jobs; on SQLite a job committed in the same process wakes it.

The worker is the real one with a stand-in pipeline that fails at once (the subject is when a job
starts, not what it computes)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, select, text

from core.config import Settings
from core.domain import JobState
from node.db.engine import Database
from node.db.orm import Job, Study, utcnow
from node.jobs.worker import NonRetryableError, Worker
from tests.conftest import POSTGRES_URL, postgres_schema_url
from tests.node.jobs.test_worker import StubPipeline, make_worker

ROOT = Path(__file__).resolve().parents[3]

# Commits queued jobs one at a time from its own process; prints "<job id> <time before commit>".
PRODUCER = """
import sys, time
from node.db.engine import Database
from node.db.orm import Job, Study, utcnow
db = Database(sys.argv[1])
prefix, count = sys.argv[2], int(sys.argv[3])
with db.write() as s:
    study = Study(study_instance_uid="7." + prefix, last_received_at=utcnow())
    s.add(study)
    s.flush()
    pk = study.id
time.sleep(0.5)
for i in range(count):
    s = db.write_session_factory()
    job = Job(study_pk=pk, pipeline_name=f"{prefix}{i}", max_attempts=1, next_attempt_at=utcnow())
    s.add(job)
    s.flush()
    job_id, before_commit = job.id, utcnow()
    s.commit()
    s.close()
    print(job_id, before_commit.isoformat(), flush=True)
    time.sleep(0.3)
db.dispose()
"""


def produce_jobs(url: str, prefix: str, count: int) -> dict[int, datetime]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", PRODUCER, url, prefix, str(count)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    ).stdout
    return {
        int(a): datetime.fromisoformat(b)
        for a, b in (line.split() for line in out.split("\n") if line)
    }


def start_latencies(
    db: Database, committed: dict[int, datetime], timeout: float = 30
) -> list[float]:
    """Seconds from each job's commit to its claim by the worker (once every job has finished)."""
    deadline = time.monotonic() + timeout
    while True:
        with db.read() as session:
            rows = session.execute(
                select(Job.id, Job.started_at, Job.state).where(Job.id.in_(list(committed)))
            ).all()
        if (
            all(state == JobState.FAILED.value for _, _, state in rows)
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.2)
    assert len(rows) == len(committed)
    assert all(started is not None for _, started, _ in rows), rows
    return [(started - committed[job_id]).total_seconds() for job_id, started, _ in rows]


class QueryCounter:
    """Statements this process sends through the database's engine."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        self._engine = db.engine
        event.listen(db.engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        self.count += 1

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)


@pytest.fixture
def pg_db() -> Iterator[Database]:
    for url in postgres_schema_url():
        database = Database(url)
        database.migrate()
        yield database
        database.dispose()


def running(worker: Worker) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


@pytest.mark.postgres
@pytest.mark.slow
def test_idle_worker_sends_no_queries_and_starts_a_job_from_another_process_at_once(
    settings: Settings, pg_db: Database
) -> None:
    worker = make_worker(settings, pg_db, StubPipeline(fail_with=NonRetryableError("stub")), [])
    stop, thread = running(worker)
    try:
        assert pg_db.wakeups.wait_listening(10)
        time.sleep(1.0)  # the connect wake-up and its one look for work
        counter = QueryCounter(pg_db)
        time.sleep(6.0)
        idle_queries = counter.count
        counter.close()
        print(f"\nidle worker: {idle_queries} queries in 6 s")
        assert idle_queries == 0

        latencies = start_latencies(pg_db, produce_jobs(pg_db.url, "a", 15))
        median, p95 = statistics.median(latencies), sorted(latencies)[int(0.95 * len(latencies))]
        print(f"commit -> job started: median {median * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
        assert median < 0.2

        # the LISTEN connection is killed: the worker reconnects and keeps starting jobs
        old_pid = pg_db.wakeups.backend_pid
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": old_pid})
        admin.dispose()
        deadline = time.monotonic() + 15
        while pg_db.wakeups.backend_pid in (None, old_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pg_db.wakeups.listening and pg_db.wakeups.backend_pid != old_pid
        after = start_latencies(pg_db, produce_jobs(pg_db.url, "b", 5))
        print(f"after reconnect: median {statistics.median(after) * 1000:.0f} ms")
        assert statistics.median(after) < 0.2
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_sqlite_job_committed_in_the_same_process_wakes_the_worker(
    settings: Settings, tmp_path: Path
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'wake.db'}")
    db.migrate()
    slow_poll = settings.model_copy(
        update={"jobs": settings.jobs.model_copy(update={"poll_interval_s": 10.0})}
    )
    worker = make_worker(slow_poll, db, StubPipeline(fail_with=NonRetryableError("stub")), [])
    stop, thread = running(worker)
    try:
        time.sleep(0.5)  # idle: its first look found nothing, it now sleeps up to 10 s
        with db.write() as session:
            study = Study(study_instance_uid="8.1", last_received_at=utcnow())
            session.add(study)
            session.flush()
            session.add(Job(study_pk=study.id, pipeline_name="p", max_attempts=1))
        committed = utcnow()
        deadline = time.monotonic() + 5
        started = None
        while started is None and time.monotonic() < deadline:
            with db.read() as session:
                started = session.scalar(select(Job.started_at))
            time.sleep(0.02)
        assert started is not None
        assert (started - committed).total_seconds() < 0.5  # not the 10 s poll
    finally:
        stop.set()
        thread.join(10)
        db.dispose()
