"""An idle dispatcher does not poll: on PostgreSQL it sleeps on LISTEN, and deliveries planned
through another connection (another engine and wake-up hub, as another process has) are sent at
once; a retry's backoff wakes it when due, not before."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.config import Settings
from core.domain import ArtifactKind
from node.db.engine import Database
from node.db.orm import AuditEvent, Delivery, Job, utcnow
from node.dispatch.delivery_plan import plan_deliveries
from node.dispatch.dispatcher import Dispatcher
from tests.conftest import postgres_schema_url
from tests.node.dispatch.conftest import add_job_with_artifacts, with_destinations
from tests.node.dispatch.factory import MadeObject
from tests.node.dispatch.test_dispatcher import folder, states
from tests.node.jobs.test_worker_wakeup import QueryCounter

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_schema_url()


def test_idle_dispatcher_sends_no_queries_and_wakes_on_a_commit_elsewhere(
    pg_url: str, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    db, other = Database(pg_url), Database(pg_url)
    db.migrate()
    cfg = with_destinations(settings, [folder(tmp_path)], jitter=0, backoff_base_s=2)
    job_id = add_job_with_artifacts(db, cfg, results)
    stop = threading.Event()
    dispatcher = Dispatcher(cfg, db)
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert db.wakeups.wait_listening(10)
        time.sleep(1.0)
        counter = QueryCounter(db)
        time.sleep(5.0)
        idle_queries = counter.count
        counter.close()
        print(f"\nidle dispatcher: {idle_queries} queries in 5 s")
        assert idle_queries == 0

        seg = results[ArtifactKind.SEG].path
        seg_bytes = seg.read_bytes()
        seg.write_bytes(b"corrupt")  # the first try of the SEG fails and backs off 2 s
        t0 = time.monotonic()
        session = other.write_session_factory()
        plan_deliveries(session, session.get_one(Job, job_id), ["export"], held=False)
        before_commit = utcnow()
        session.commit()
        session.close()
        while states(db, job_id)[("pdf", "export")] != "delivered":
            assert time.monotonic() - t0 < 5
            time.sleep(0.02)
        with db.read() as s:
            claimed_at = s.scalar(
                select(func.min(AuditEvent.at)).where(AuditEvent.action == "delivery.claimed")
            )
        assert claimed_at is not None
        latency = (claimed_at - before_commit).total_seconds()
        print(f"planned elsewhere -> claimed: {latency * 1000:.0f} ms")
        assert latency < 0.3  # woken by NOTIFY, not a poll
        seg.write_bytes(seg_bytes)
        while set(states(db, job_id).values()) != {"delivered"}:
            assert time.monotonic() - t0 < 8  # the retry is due after ~2 s; no 30 s safety wait
            time.sleep(0.05)
        with db.read() as session:
            seg_delivery = next(
                d
                for d in session.query(Delivery).all()
                if d.artifact.kind == ArtifactKind.SEG.value
            )
            assert seg_delivery.attempts == 2
    finally:
        stop.set()
        thread.join(10)
        db.dispose()
        other.dispose()
    assert not thread.is_alive()
