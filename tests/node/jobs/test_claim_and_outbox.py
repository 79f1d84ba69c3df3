"""Broker-engine semantics that need no broker, on SQLite and PostgreSQL: a job named by a message
is claimed at most once and only while queued and due; a late worker cannot finish a job taken
over; the outbox publishes only committed queued jobs and re-publishes only what the broker lacks;
one scheduler holds the leader lock at a time."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import select

from core.config import Settings
from node.db.engine import Database
from node.db.orm import Job
from node.jobs import queue
from node.jobs.outbox import Outbox, QueueDepth
from node.leader import LeaderLock
from tests.node.jobs.rows import add_study
from tests.node.jobs.test_queue import soon, sweep


class RecordingPublisher:
    """The outbox's seam to a broker, with queue depths the test sets (the real broker is used by
    tests/node/test_celery_cluster.py)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []
        self.depths: dict[str, QueueDepth] = {}

    def publish(self, job_id: int, queue: str, eta: datetime | None = None) -> None:
        self.sent.append((job_id, queue))

    def queue_depths(self, queues: Collection[str]) -> dict[str, QueueDepth]:
        return {q: self.depths.get(q, QueueDepth(0, 0)) for q in queues}


def _job_ids(db: Database) -> list[int]:
    with db.read() as s:
        return list(s.scalars(select(Job.id).order_by(Job.id)))


def test_named_claim_runs_a_job_once_whatever_the_messages(
    settings: Settings, db: Database
) -> None:
    add_study(db, "2.1", modality="CR")
    sweep(settings, db)
    (job_id,) = _job_ids(db)
    first = queue.claim_job(db, job_id, "w1@hostA:1", soon(), settings.jobs)
    assert first is not None and first.job_id == job_id and first.attempt == 1
    # the same message delivered again, to another worker: the job is running, nothing happens
    assert queue.claim_job(db, job_id, "w2@hostB:2", soon(), settings.jobs) is None
    assert queue.claim_job(db, 999_999, "w2@hostB:2", soon(), settings.jobs) is None
    # w1 is presumed dead: its lease expires, w2 takes the job over by the re-published message
    later = soon() + timedelta(seconds=settings.jobs.lease_s + 1)
    with db.write() as s:
        assert queue.expire_leases(s, later, settings.jobs) == [job_id]
    second = queue.claim_job(db, job_id, "w2@hostB:2", later, settings.jobs)
    assert second is not None and second.attempt == 2
    with db.write() as s:  # the late worker comes back: it no longer owns the job
        assert queue.owned_job(s, job_id, "w1@hostA:1") is None
        job = queue.owned_job(s, job_id, "w2@hostB:2")
        assert job is not None
        queue.mark_succeeded(s, job, "w2@hostB:2", later, {}, "ok")
    assert queue.claim_job(db, job_id, "w3@hostC:3", later, settings.jobs) is None


def test_named_claim_waits_for_the_retry_time(settings: Settings, db: Database) -> None:
    add_study(db, "2.2", modality="CR")
    sweep(settings, db)
    (job_id,) = _job_ids(db)
    claimed = queue.claim_job(db, job_id, "w1", soon(), settings.jobs)
    assert claimed is not None
    with db.write() as s:
        job = queue.owned_job(s, job_id, "w1")
        assert job is not None
        queue.mark_failed(s, job, "w1", soon(), "boom", settings.jobs)
        due = job.next_attempt_at
    assert queue.claim_job(db, job_id, "w1", due - timedelta(seconds=1), settings.jobs) is None
    assert queue.claim_job(db, job_id, "w1", due + timedelta(seconds=1), settings.jobs) is not None


def test_outbox_publishes_committed_jobs_to_their_queue(settings: Settings, db: Database) -> None:
    add_study(db, "3.1")  # CT: demo-3d and ct-extra
    add_study(db, "3.2", modality="CR")
    done = sweep(settings, db)
    publisher = RecordingPublisher()
    outbox = Outbox(db, publisher, lambda name: "gpu" if name == "demo-3d" else "cpu")
    published = outbox.publish_studies(done)
    assert sorted(published) == _job_ids(db)
    queues = {}
    with db.read() as s:
        for job_id, name in s.execute(select(Job.id, Job.pipeline_name)):
            queues[job_id] = "gpu" if name == "demo-3d" else "cpu"
    assert sorted(publisher.sent) == sorted(queues.items())
    claimed = queue.claim_job(db, published[0], "w1", soon(), settings.jobs)
    assert claimed is not None
    publisher.sent.clear()
    assert outbox.publish_jobs(published) == published[1:]  # a running job is not re-published


def test_reconciliation_republishes_only_what_the_broker_lacks(
    settings: Settings, db: Database
) -> None:
    add_study(db, "4.1", modality="CR")
    add_study(db, "4.2", modality="CR")
    sweep(settings, db)
    publisher = RecordingPublisher()
    outbox = Outbox(db, publisher, lambda name: "cpu")
    with db.read() as s:
        now = max(s.scalars(select(Job.next_attempt_at))) + timedelta(seconds=1)
    assert outbox.reconcile(now, settings.jobs) == []  # not queued long enough yet
    stale_time = now + timedelta(seconds=settings.jobs.republish_after_s + 1)
    publisher.depths["cpu"] = QueueDepth(messages=2, consumers=0)  # both messages still there
    assert outbox.reconcile(stale_time, settings.jobs) == []
    publisher.depths["cpu"] = QueueDepth(messages=1, consumers=1)  # one publish was lost
    assert sorted(outbox.reconcile(stale_time, settings.jobs)) == _job_ids(db)


def test_one_scheduler_holds_the_leader_lock(db: Database) -> None:
    first, second = LeaderLock(db), LeaderLock(Database(db.url))
    try:
        assert first.try_acquire() and first.still_held()
        if db.sqlite:  # one process by construction: no lock to take
            assert second.try_acquire()
            return
        assert not second.try_acquire()
        first.release()
        assert second.try_acquire() and second.still_held()
        assert not first.try_acquire()
    finally:
        first.release()
        second.release()
        second.db.dispose()


def test_leader_lock_is_released_when_the_holder_connection_dies(db: Database) -> None:
    if db.sqlite:
        return
    holder, standby = LeaderLock(Database(db.url)), LeaderLock(db)
    try:
        assert holder.try_acquire()
        assert not standby.try_acquire()
        holder.db.engine.dispose()  # a killed process: its session ends
        assert holder._conn is not None
        holder._conn.invalidate()
        assert standby.try_acquire()
        assert not holder.still_held()
    finally:
        standby.release()
        holder.release()
        holder.db.dispose()
