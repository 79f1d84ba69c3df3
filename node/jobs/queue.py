"""The durable job queue: atomic claims with leases, retries with backoff, every transition audited.

A claim flips one due job from queued to running and gives it a lease; PostgreSQL takes the row
with ``FOR UPDATE SKIP LOCKED`` so concurrent workers never wait on each other, SQLite serialises
claims through its single writer (``BEGIN IMMEDIATE``). A worker that dies leaves a lease that
expires; :func:`expire_leases` puts such a job back in the queue. Every finishing update checks
that the caller still owns the lease, so a worker that was presumed dead cannot overwrite the
outcome of the one that took over.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.config import JobSettings
from core.domain import JobState, ReviewState, StudyState
from node.backoff import backoff_delay
from node.db.engine import Database
from node.db.orm import Job, Study, utcnow
from node.db.repositories import audit

JOB_BACKOFF_JITTER = 0.2  # retries spread over ±20% of the delay


@dataclass(frozen=True)
class ClaimedJob:
    job_id: int
    study_uid: str
    pipeline_name: str
    pipeline_version: str
    result_version: int
    attempt: int
    destinations: tuple[str, ...]
    review_required: bool


def claim_next(
    db: Database,
    worker_id: str,
    now: datetime,
    settings: JobSettings,
    pipelines: Collection[str] | None = None,
) -> ClaimedJob | None:
    """Claim the oldest due queued job (optionally only for the given pipelines)."""
    with db.write() as session:
        stmt = (
            select(Job)
            .where(Job.state == JobState.QUEUED.value, Job.next_attempt_at <= now)
            .order_by(Job.next_attempt_at, Job.id)
            .limit(1)
        )
        if pipelines is not None:
            stmt = stmt.where(Job.pipeline_name.in_(list(pipelines)))
        if not db.sqlite:
            stmt = stmt.with_for_update(skip_locked=True)
        job = session.scalar(stmt)
        return None if job is None else _take(session, job, worker_id, now, settings)


def next_due_at(session: Session, pipelines: Collection[str] | None = None) -> datetime | None:
    """When the earliest queued job (of ``pipelines``) is due; None when none is queued.

    A read, so an idle worker asks it instead of trying a claim (no write lock on SQLite), and
    sleeps until that time when it lies ahead (a retry's backoff)."""
    stmt = select(func.min(Job.next_attempt_at)).where(Job.state == JobState.QUEUED.value)
    if pipelines is not None:
        stmt = stmt.where(Job.pipeline_name.in_(list(pipelines)))
    return session.scalar(stmt)


def claim_job(
    db: Database, job_id: int, worker_id: str, now: datetime, settings: JobSettings
) -> ClaimedJob | None:
    """Claim one named job (a broker message carries only its id) if it is queued and due.

    None when it is not: already running under another lease, finished, or its retry is not yet
    due — so a duplicate or late delivery of the same message never runs the job twice.
    """
    with db.write() as session:
        stmt = select(Job).where(
            Job.id == job_id, Job.state == JobState.QUEUED.value, Job.next_attempt_at <= now
        )
        if not db.sqlite:
            stmt = stmt.with_for_update(skip_locked=True)
        job = session.scalar(stmt)
        return None if job is None else _take(session, job, worker_id, now, settings)


def _take(
    session: Session, job: Job, worker_id: str, now: datetime, settings: JobSettings
) -> ClaimedJob:
    """queued -> running under ``worker_id``'s lease, audited."""
    job.state = JobState.RUNNING.value
    job.attempts += 1
    job.lease_owner = worker_id
    job.lease_expires_at = now + timedelta(seconds=settings.lease_s)
    job.started_at = now
    study_uid = session.scalar(select(Study.study_instance_uid).where(Study.id == job.study_pk))
    audit.record(
        session,
        "job.claimed",
        entity_type="job",
        entity_id=job.id,
        actor=worker_id,
        from_state=JobState.QUEUED.value,
        to_state=JobState.RUNNING.value,
        detail=f"attempt {job.attempts}/{job.max_attempts}",
    )
    return ClaimedJob(
        job_id=job.id,
        study_uid=study_uid or "",
        pipeline_name=job.pipeline_name,
        pipeline_version=job.pipeline_version,
        result_version=job.result_version,
        attempt=job.attempts,
        destinations=tuple(job.destinations or ()),
        review_required=job.review_state == "pending",
    )


def owned_job(session: Session, job_id: int, worker_id: str) -> Job | None:
    """The job if it is still running under this worker's lease (else None: someone took over)."""
    stmt = select(Job).where(
        Job.id == job_id, Job.state == JobState.RUNNING.value, Job.lease_owner == worker_id
    )
    return session.scalar(stmt)


def renew_lease(
    db: Database, job_id: int, worker_id: str, now: datetime, settings: JobSettings
) -> bool:
    with db.write() as session:
        result = session.execute(
            update(Job)
            .where(
                Job.id == job_id, Job.state == JobState.RUNNING.value, Job.lease_owner == worker_id
            )
            .values(lease_expires_at=now + timedelta(seconds=settings.lease_s))
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def mark_succeeded(
    session: Session, job: Job, worker_id: str, now: datetime, summary: dict[str, object], log: str
) -> None:
    job.state = JobState.SUCCEEDED.value
    job.finished_at = now
    job.lease_owner = ""
    job.lease_expires_at = None
    job.error = ""
    job.summary = summary
    job.log = log[-20000:]
    if job.started_at is not None:
        job.duration_s = (now - job.started_at).total_seconds()
    audit.record(
        session,
        "job.succeeded",
        entity_type="job",
        entity_id=job.id,
        actor=worker_id,
        from_state=JobState.RUNNING.value,
        to_state=JobState.SUCCEEDED.value,
    )
    _update_study_state(session, job.study_pk)


def mark_failed(
    session: Session,
    job: Job,
    worker_id: str,
    now: datetime,
    error: str,
    settings: JobSettings,
    log: str = "",
    retryable: bool = True,
) -> None:
    """Requeue with backoff while attempts remain (and the error is retryable), else fail for good."""
    job.lease_owner = ""
    job.lease_expires_at = None
    job.error = error[-8000:]
    job.log = log[-20000:]
    if retryable and job.attempts < job.max_attempts:
        job.state = JobState.QUEUED.value
        job.next_attempt_at = now + timedelta(
            seconds=backoff_delay(
                job.attempts, settings.backoff_base_s, settings.backoff_max_s, JOB_BACKOFF_JITTER
            )
        )
        to_state = JobState.QUEUED.value
    else:
        job.state = JobState.FAILED.value
        job.finished_at = now
        to_state = JobState.FAILED.value
    audit.record(
        session,
        "job.failed" if to_state == "failed" else "job.retry",
        entity_type="job",
        entity_id=job.id,
        actor=worker_id,
        from_state=JobState.RUNNING.value,
        to_state=to_state,
        detail=error[-2000:],
    )
    if to_state == JobState.FAILED.value:
        _update_study_state(session, job.study_pk)


def release(session: Session, job: Job, worker_id: str, reason: str) -> None:
    """Give a job back unfinished (shutdown): queued again, this attempt not counted."""
    job.state = JobState.QUEUED.value
    job.attempts = max(job.attempts - 1, 0)
    job.lease_owner = ""
    job.lease_expires_at = None
    audit.record(
        session,
        "job.released",
        entity_type="job",
        entity_id=job.id,
        actor=worker_id,
        from_state=JobState.RUNNING.value,
        to_state=JobState.QUEUED.value,
        detail=reason,
    )


def expire_leases(session: Session, now: datetime, settings: JobSettings) -> list[int]:
    """Requeue running jobs whose lease ran out (their worker died); return their ids."""
    stale = session.scalars(
        select(Job).where(Job.state == JobState.RUNNING.value, Job.lease_expires_at < now)
    ).all()
    for job in stale:
        mark_failed(
            session,
            job,
            job.lease_owner or "unknown",
            now,
            f"lease expired (worker {job.lease_owner or '?'} presumed dead)",
            settings,
        )
        job.next_attempt_at = min(job.next_attempt_at, now)  # no backoff: the job did not fail
    return [j.id for j in stale]


def add_queued_job(
    session: Session,
    *,
    study_pk: int,
    pipeline_name: str,
    pipeline_version: str,
    result_version: int,
    destinations: Collection[str],
    review_required: bool,
    max_attempts: int,
    now: datetime,
    detail: str,
    actor: str = "system",
) -> Job:
    """A new queued job row and its ``job.created`` audit row: the one way jobs come to be
    (routing a complete study, a console re-run with another pipeline, ``/api/predict``)."""
    job = Job(
        study_pk=study_pk,
        pipeline_name=pipeline_name,
        pipeline_version=pipeline_version,
        result_version=result_version,
        destinations=list(destinations),
        state=JobState.QUEUED.value,
        review_state=(ReviewState.PENDING if review_required else ReviewState.NOT_REQUIRED).value,
        max_attempts=max_attempts,
        next_attempt_at=now,
    )
    session.add(job)
    session.flush()
    audit.record(
        session,
        "job.created",
        entity_type="job",
        entity_id=job.id,
        actor=actor,
        to_state=JobState.QUEUED.value,
        detail=detail,
    )
    return job


def requeue_job(session: Session, job_id: int, actor: str) -> bool:
    """Console "re-run": a terminal job goes back to the queue with fresh attempts."""
    job = session.get(Job, job_id)
    if job is None or job.state not in (JobState.SUCCEEDED.value, JobState.FAILED.value):
        return False
    from_state = job.state
    job.state = JobState.QUEUED.value
    job.attempts = 0
    job.error = ""
    job.next_attempt_at = utcnow()
    job.finished_at = None
    study = session.get(Study, job.study_pk)
    if study is not None and study.state == StudyState.PROCESSED.value:
        study.state = StudyState.COMPLETE.value
        study.outcome = ""
    audit.record(
        session,
        "job.requeued",
        entity_type="job",
        entity_id=job.id,
        actor=actor,
        from_state=from_state,
        to_state=JobState.QUEUED.value,
    )
    return True


def cancel_job(session: Session, job_id: int, actor: str) -> bool:
    """Console "cancel": a job still queued ends as failed ("cancelled by ...") and is never run.

    One conditional UPDATE, so a worker claiming the job at the same moment either wins (the job
    is running and this returns False) or finds it gone from the queue."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.QUEUED.value)
        .values(state=JobState.FAILED.value, error=f"cancelled by {actor}", finished_at=now)
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    job = session.get(Job, job_id)
    assert job is not None
    session.refresh(job)
    audit.record(
        session,
        "job.cancelled",
        entity_type="job",
        entity_id=job_id,
        actor=actor,
        from_state=JobState.QUEUED.value,
        to_state=JobState.FAILED.value,
    )
    _update_study_state(session, job.study_pk)
    return True


def rerun_with_pipeline(
    session: Session,
    job_id: int,
    pipeline_name: str,
    pipeline_version: str,
    review_required: bool,
    actor: str,
) -> Job:
    """Console "re-run with another pipeline": a new queued job for the same study, result
    version and destinations under ``pipeline_name``; an earlier finished job of that pipeline
    for this result version is queued again instead (the pair is unique).

    Raises LookupError for an unknown job, ValueError when that pipeline's job is still open."""
    source = session.get(Job, job_id)
    if source is None:
        raise LookupError(f"no job {job_id}")
    existing = session.scalar(
        select(Job).where(
            Job.study_pk == source.study_pk,
            Job.pipeline_name == pipeline_name,
            Job.result_version == source.result_version,
        )
    )
    if existing is not None:
        if not requeue_job(session, existing.id, actor):
            raise ValueError(f"job {existing.id} of {pipeline_name} is {existing.state} already")
        return existing
    job = add_queued_job(
        session,
        study_pk=source.study_pk,
        pipeline_name=pipeline_name,
        pipeline_version=pipeline_version,
        result_version=source.result_version,
        destinations=source.destinations or (),
        review_required=review_required,
        max_attempts=source.max_attempts,
        now=utcnow(),
        detail=f"re-run of job {source.id} with pipeline {pipeline_name} v{pipeline_version}",
        actor=actor,
    )
    study = session.get(Study, source.study_pk)
    if study is not None and study.state == StudyState.PROCESSED.value:
        study.state = StudyState.COMPLETE.value
    return job


def _update_study_state(session: Session, study_pk: int) -> None:
    """A study is processed once every job of its current result version is terminal."""
    study = session.get(Study, study_pk)
    if study is None or study.state != StudyState.COMPLETE.value:
        return
    open_jobs = session.scalar(
        select(func.count(Job.id)).where(
            Job.study_pk == study_pk,
            Job.result_version == study.result_version,
            Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
        )
    )
    if not open_jobs:
        study.state = StudyState.PROCESSED.value
        study.outcome = _jobs_outcome(session, study)
        audit.record(
            session,
            "study.processed",
            entity_type="study",
            entity_id=study.study_instance_uid,
            from_state=StudyState.COMPLETE.value,
            to_state=StudyState.PROCESSED.value,
            detail=study.outcome,
        )


def _jobs_outcome(session: Session, study: Study) -> str:
    """ "1 of 2 jobs failed" (the console shows such a study as failed, not green), else ""."""
    states = session.scalars(
        select(Job.state).where(
            Job.study_pk == study.id, Job.result_version == study.result_version
        )
    ).all()
    failed = sum(s == JobState.FAILED.value for s in states)
    return f"{failed} of {len(states)} job(s) failed" if failed else ""


def counts_by_state(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).all()
    return {state: n for state, n in rows}
