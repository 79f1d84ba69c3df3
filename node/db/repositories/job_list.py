"""The console's job queue view: jobs with their study, filtered by state and pipeline.

Rows are plain frozen values (no lazy loads after the session closes) so the same query serves
the page, its live-refresh fragment and the JSON view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.domain import DeliveryState
from node.db.orm import Delivery, Job, Study, utcnow

MAX_ROWS = 200


@dataclass(frozen=True)
class QueueRow:
    id: int
    state: str
    pipeline: str
    pipeline_version: str
    worker: str  # the lease owner while running (or the last one)
    attempts: int
    max_attempts: int
    duration_s: float | None  # finished: the run's time; running: time since it started
    error: str
    created_at: datetime
    study_uid: str
    patient_name: str
    review_state: str


def queue(
    session: Session, *, state: str = "", pipeline: str = "", limit: int = MAX_ROWS
) -> list[QueueRow]:
    """Newest jobs first, optionally only one state and/or one pipeline."""
    stmt = (
        select(Job, Study.study_instance_uid, Study.patient_name)
        .join(Study, Study.id == Job.study_pk)
        .order_by(Job.id.desc())
        .limit(min(max(limit, 1), MAX_ROWS))
    )
    if state:
        stmt = stmt.where(Job.state == state)
    if pipeline:
        stmt = stmt.where(Job.pipeline_name == pipeline)
    now = utcnow()
    rows = []
    for job, study_uid, patient in session.execute(stmt):
        duration = job.duration_s
        if duration is None and job.state == "running" and job.started_at is not None:
            duration = (now - job.started_at).total_seconds()
        rows.append(
            QueueRow(
                id=job.id,
                state=job.state,
                pipeline=job.pipeline_name,
                pipeline_version=job.pipeline_version,
                worker=job.lease_owner,
                attempts=job.attempts,
                max_attempts=job.max_attempts,
                duration_s=duration,
                error=job.error,
                created_at=job.created_at,
                study_uid=study_uid,
                patient_name=patient,
                review_state=job.review_state,
            )
        )
    return rows


def job_ids(session: Session, *, state: str = "", pipeline: str = "", limit: int) -> list[int]:
    """Ids of every job the queue's filters select, newest first (the bulk exports: not capped
    at the page's ``MAX_ROWS``, only at ``limit``)."""
    stmt = select(Job.id).order_by(Job.id.desc()).limit(limit)
    if state:
        stmt = stmt.where(Job.state == state)
    if pipeline:
        stmt = stmt.where(Job.pipeline_name == pipeline)
    return list(session.scalars(stmt))


def pipelines_seen(session: Session) -> list[str]:
    return list(session.scalars(select(Job.pipeline_name).distinct().order_by(Job.pipeline_name)))


def state_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state))
    return {state: int(n) for state, n in rows}


def failed_delivery_ids(session: Session) -> Sequence[int]:
    stmt = select(Delivery.id).where(Delivery.state == DeliveryState.FAILED.value)
    return session.scalars(stmt.order_by(Delivery.id)).all()
