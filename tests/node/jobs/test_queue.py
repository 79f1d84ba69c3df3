"""The job queue on SQLite and PostgreSQL: one job per (study, pipeline), atomic claims,
leases that expire, retries with backoff, a terminal failure, and an audit row per transition."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from core.config import Settings
from core.domain import JobState, SeriesFacts, StudyState
from node.db.engine import Database
from node.db.orm import AuditEvent, Job, Study, utcnow
from node.db.repositories import audit
from node.grouping.completion import force_complete
from node.jobs import queue
from node.jobs.creation import JobPlanner
from node.scheduler import completion_sweep, lease_expiry
from tests.node.jobs.rows import add_study


@dataclass(frozen=True)
class _Sel:
    modality: str

    def matches(self, series: SeriesFacts) -> bool:
        return series.modality == self.modality


@dataclass(frozen=True)
class _Pipe:
    selection: _Sel
    enabled: bool = True
    version: str = "1.2"
    review_required: bool = False


PIPES = {"demo-3d": _Pipe(_Sel("CT")), "ct-extra": _Pipe(_Sel("CT")), "demo-2d": _Pipe(_Sel("CR"))}


def soon() -> datetime:
    """A clock past the sweep's (jobs are due from the simulated completion time on)."""
    return utcnow() + timedelta(seconds=120)


def sweep(settings: Settings, db: Database, seconds_later: float = 60.0) -> list[str]:
    return completion_sweep(
        settings, db, JobPlanner(settings, PIPES), utcnow() + timedelta(seconds=seconds_later)
    )


def test_completion_creates_one_job_per_pipeline_exactly_once(
    settings: Settings, db: Database
) -> None:
    add_study(db, "1.1")
    add_study(db, "1.2", modality="CR")
    assert sweep(settings, db, seconds_later=1) == []  # quiet period not over
    assert sorted(sweep(settings, db)) == ["1.1", "1.2"]
    assert sweep(settings, db) == []
    with db.read() as s:
        jobs = s.execute(select(Job.pipeline_name, Study.study_instance_uid).join(Study)).all()
        assert sorted(jobs) == [("ct-extra", "1.1"), ("demo-2d", "1.2"), ("demo-3d", "1.1")]
        assert s.scalar(select(Study.state).where(Study.study_instance_uid == "1.1")) == "complete"
        assert audit.query(s, action="study.completed")


def test_study_without_matching_pipeline_is_skipped_with_the_reason(
    settings: Settings, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    add_study(db, "9.9", modality="NM")
    with caplog.at_level(logging.INFO, logger="node.jobs.creation"):
        sweep(settings, db)
    with db.read() as s:
        study = s.scalars(select(Study)).one()
        assert (study.state, study.outcome) == (
            StudyState.SKIPPED.value,
            "no pipeline matches (modality NM)",
        )
        [event] = audit.query(s, action="study.skipped")
        assert event.detail.startswith("no pipeline matches (modality NM)\n")
        assert s.scalar(select(func.count(Job.id))) == 0
    assert "study 9.9 skipped: no pipeline matches (modality NM)" in caplog.text


def test_force_complete_is_picked_up_by_the_next_sweep(settings: Settings, db: Database) -> None:
    add_study(db, "2.1")
    with db.write() as s:
        assert force_complete(s, "2.1", "operator", utcnow())
        assert not force_complete(s, "does.not.exist", "operator", utcnow())
    assert sweep(settings, db, seconds_later=0) == ["2.1"]


def test_claim_is_exclusive_and_leased(settings: Settings, db: Database) -> None:
    add_study(db, "3.1")
    sweep(settings, db)
    now = soon()
    first = queue.claim_next(db, "w1", now, settings.jobs, pipelines=["demo-3d"])
    assert first is not None and first.pipeline_name == "demo-3d" and first.attempt == 1
    assert queue.claim_next(db, "w2", now, settings.jobs, pipelines=["demo-3d"]) is None
    with db.read() as s:
        job = s.get(Job, first.job_id)
        assert job is not None and job.state == "running" and job.lease_owner == "w1"
        assert job.lease_expires_at is not None and job.lease_expires_at > now


def test_concurrent_workers_never_claim_the_same_job(settings: Settings, db: Database) -> None:
    for i in range(6):
        add_study(db, f"4.{i}")
    sweep(settings, db)  # 12 jobs
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            job = queue.claim_next(db, name, soon(), settings.jobs)
            if job is None:
                return
            with lock:
                claimed.append(job.job_id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 12 and len(set(claimed)) == 12


def test_failures_retry_with_backoff_then_fail_for_good(settings: Settings, db: Database) -> None:
    add_study(db, "5.1", modality="CR")
    sweep(settings, db)
    now = soon()
    for attempt in range(1, settings.jobs.max_attempts + 1):
        claimed = queue.claim_next(db, "w", now, settings.jobs)
        assert claimed is not None and claimed.attempt == attempt
        with db.write() as s:
            job = queue.owned_job(s, claimed.job_id, "w")
            assert job is not None
            queue.mark_failed(s, job, "w", now, "RuntimeError: boom", settings.jobs)
        with db.read() as s:
            job = s.get(Job, claimed.job_id)
            assert job is not None
            if attempt < settings.jobs.max_attempts:
                assert job.state == "queued" and job.next_attempt_at > now
                assert queue.claim_next(db, "w", now, settings.jobs) is None  # backing off
                now = job.next_attempt_at + timedelta(seconds=1)
            else:
                assert job.state == "failed" and "boom" in job.error
    with db.read() as s:
        study = s.scalars(select(Study)).one()
        assert (study.state, study.outcome) == ("processed", "1 of 1 job(s) failed")
        actions = [e.action for e in audit.query(s, entity_type="job")]
        assert actions.count("job.retry") == settings.jobs.max_attempts - 1
        assert actions.count("job.failed") == 1


def test_job_retry_delay_is_the_shared_backoff(settings: Settings, db: Database) -> None:
    """Jobs back off like deliveries (node.backoff): base * 2^(n-1) seconds, ±20%."""
    add_study(db, "5.2", modality="CR")
    sweep(settings, db)
    now = soon()
    base = settings.jobs.backoff_base_s
    for attempt in (1, 2):
        claimed = queue.claim_next(db, "w", now, settings.jobs)
        assert claimed is not None
        with db.write() as s:
            job = queue.owned_job(s, claimed.job_id, "w")
            assert job is not None
            queue.mark_failed(s, job, "w", now, "RuntimeError: boom", settings.jobs)
            delay = (job.next_attempt_at - now).total_seconds()
        expected = base * 2 ** (attempt - 1)
        assert 0.8 * expected <= delay <= 1.2 * expected
        now = now + timedelta(seconds=delay + 1)


def test_expired_lease_requeues_and_fences_the_old_worker(settings: Settings, db: Database) -> None:
    add_study(db, "6.1", modality="CR")
    sweep(settings, db)
    claimed = queue.claim_next(db, "dead", soon(), settings.jobs)
    assert claimed is not None
    later = soon() + timedelta(seconds=settings.jobs.lease_s + 1)
    assert lease_expiry(settings, db, later) == [claimed.job_id]
    again = queue.claim_next(db, "alive", later, settings.jobs)
    assert again is not None and again.job_id == claimed.job_id and again.attempt == 2
    with db.write() as s:
        assert queue.owned_job(s, claimed.job_id, "dead") is None
        job = queue.owned_job(s, claimed.job_id, "alive")
        assert job is not None
        queue.mark_succeeded(s, job, "alive", later, {"top_class": "normal"}, "ok")
    with db.read() as s:
        assert s.scalar(select(Study.state)) == "processed"
        assert (
            s.scalar(select(func.count(AuditEvent.id)).where(AuditEvent.action == "job.succeeded"))
            == 1
        )


def test_release_on_shutdown_does_not_count_the_attempt(settings: Settings, db: Database) -> None:
    add_study(db, "7.1", modality="CR")
    sweep(settings, db)
    claimed = queue.claim_next(db, "w", soon(), settings.jobs)
    assert claimed is not None
    with db.write() as s:
        job = queue.owned_job(s, claimed.job_id, "w")
        assert job is not None
        queue.release(s, job, "w", "shutdown")
    again = queue.claim_next(db, "w2", soon(), settings.jobs)
    assert again is not None and again.attempt == 1


def test_requeue_of_a_terminal_job(settings: Settings, db: Database) -> None:
    add_study(db, "8.1", modality="CR")
    sweep(settings, db)
    claimed = queue.claim_next(db, "w", soon(), settings.jobs)
    assert claimed is not None
    with db.write() as s:
        assert not queue.requeue_job(s, claimed.job_id, "admin")  # still running
        job = queue.owned_job(s, claimed.job_id, "w")
        assert job is not None
        queue.mark_succeeded(s, job, "w", utcnow(), {}, "")
    with db.write() as s:
        assert queue.requeue_job(s, claimed.job_id, "admin")
    with db.read() as s:
        assert s.get(Job, claimed.job_id).state == JobState.QUEUED.value  # type: ignore[union-attr]
        assert s.scalar(select(Study.state)) == "complete"
