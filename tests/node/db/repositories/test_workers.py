"""The worker registry on SQLite and PostgreSQL: heartbeats, staleness, clean stops, and which
queues the live workers cover."""

from __future__ import annotations

import time
from datetime import timedelta

from node.db.engine import Database
from node.db.orm import WorkerProcess, utcnow
from node.db.repositories import workers as registry
from node.heartbeat import Heartbeat, Registration


def _beat(db: Database, name: str, queues: list[str], devices: list[str], ago_s: float = 0) -> None:
    with db.write() as session:
        registry.beat(
            session,
            name=name,
            host="hostA",
            engine="celery",
            queues=queues,
            devices=devices,
            pid=123,
            now=utcnow() - timedelta(seconds=ago_s),
        )


def test_live_and_stale_workers_decide_which_queues_are_served(db: Database) -> None:
    _beat(db, "cpu1@hostA", ["cpu"], ["cpu"])
    _beat(db, "gpu1@hostB", ["gpu"], ["cpu", "cuda:0", "cuda:1"], ago_s=60)  # missed its beats
    _beat(db, "d1@hostC", ["deliveries"], [])
    with db.read() as session:
        views = registry.workers(session, utcnow(), stale_after_s=15)
    assert [(w.name, w.live) for w in views] == [
        ("cpu1@hostA", True),
        ("d1@hostC", True),
        ("gpu1@hostB", False),
    ]
    consumers = registry.queue_consumers(["cpu", "gpu"], ["deliveries"], views)
    assert consumers == {"cpu": ["cpu1@hostA"], "gpu": [], "deliveries": ["d1@hostC"]}
    assert registry.live_devices(views) == ["cpu"]  # the GPU host is gone
    _beat(db, "gpu1@hostB", ["gpu"], ["cpu", "cuda:0", "cuda:1"])  # it is back
    with db.read() as session:
        views = registry.workers(session, utcnow(), stale_after_s=15)
    assert registry.live_devices(views) == ["cpu", "cuda:0", "cuda:1"]
    assert registry.queue_consumers(["gpu"], [], views) == {"gpu": ["gpu1@hostB"]}


def test_a_worker_of_every_pipeline_serves_pipeline_queues_not_deliveries(db: Database) -> None:
    _beat(db, "host:1", [registry.ANY_QUEUE], ["cpu"])
    with db.read() as session:
        views = registry.workers(session, utcnow(), stale_after_s=15)
    consumers = registry.queue_consumers(["cpu", "gpu"], ["deliveries"], views)
    assert consumers == {"cpu": ["host:1"], "gpu": ["host:1"], "deliveries": []}


def test_heartbeat_thread_refreshes_its_row_and_removes_it_on_stop(db: Database) -> None:
    beat = Heartbeat(db, Registration("w9@hostZ", "local", ["cpu"], ["cpu"]), 0.1).start()
    with db.read() as session:
        first = session.query(WorkerProcess).one()
        seen, started = first.last_seen_at, first.started_at
    time.sleep(0.5)
    with db.read() as session:
        row = session.query(WorkerProcess).one()
        assert row.last_seen_at > seen and row.started_at == started
        assert (row.queues, row.devices, row.engine) == (["cpu"], ["cpu"], "local")
    beat.stop()
    with db.read() as session:
        assert session.query(WorkerProcess).count() == 0


def test_rows_of_workers_gone_for_a_day_are_forgotten(db: Database) -> None:
    _beat(db, "old@host", ["cpu"], ["cpu"], ago_s=2 * 86400)
    _beat(db, "new@host", ["cpu"], ["cpu"])
    with db.read() as session:
        assert [w.name for w in registry.workers(session, utcnow(), 15)] == ["new@host"]


def test_receivers_are_a_problem_only_when_none_of_them_beats(db: Database) -> None:
    """A receiver restarted under a new pid leaves its old row stale beside a live one: fine.
    Workers and a console-only node (no receiver row) are never a receiver problem."""

    def problem() -> str | None:
        with db.read() as session:
            return registry.receivers_problem(registry.workers(session, utcnow(), 15))

    _beat(db, "cpu1@hostA", ["cpu"], ["cpu"], ago_s=60)
    assert problem() is None
    with db.write() as session:
        for name, ago_s in (("hostA:10:11112", 120), ("hostA:20:11112", 60)):
            registry.beat(session, name=name, host="hostA", engine=registry.RECEIVER, queues=(),
                          devices=(), pid=1, now=utcnow() - timedelta(seconds=ago_s))  # fmt: skip
    found = problem()
    assert found is not None and found.startswith("no DICOM receiver is answering (last seen ")
    assert found.endswith(", hostA:20:11112)")  # the last one seen
    with db.write() as session:
        registry.beat(session, name="hostA:30:11112", host="hostA", engine=registry.RECEIVER,
                      queues=(), devices=(), pid=1, now=utcnow())  # fmt: skip
    assert problem() is None
