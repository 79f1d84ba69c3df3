"""Predictions asked over the API (``POST /api/predict``): a job queued for one pipeline, directly.

The web console must not load PyTorch, so an API prediction goes the same way as a received
study: its files are imported (``node.ingest.importer``, source ``predict`` or ``api``), a job is
queued here in the normal job table, and a worker runs it. What differs from routing is only who
picks the pipeline (the caller) and the destinations (none unless the caller asks for delivery).

A study imported with source :data:`TRANSIENT_SOURCE` exists only to be predicted: the caller's
request removes it when its answer is sent, and :func:`stale_transient_studies` finds the ones a
batch (or a crash) left behind once their retention is over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.domain import JobState, StudyState
from node.db.orm import Artifact, Job, Study
from node.db.repositories.search import TRANSIENT_SOURCE  # hidden from the study list
from node.jobs.queue import add_queued_job

__all__ = [
    "KEPT_SOURCE",
    "TRANSIENT_SOURCE",
    "PredictionRefused",
    "PredictionState",
    "prediction_states",
    "queue_prediction",
    "stale_transient_studies",
]
KEPT_SOURCE = "api"  # ``keep=true``: stays in the study list like an upload
OPEN_STATES = (JobState.QUEUED.value, JobState.RUNNING.value)


class PredictionRefused(Exception):
    """The study cannot be predicted as asked; ``status`` is the HTTP answer, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class PredictionState:
    """One queued prediction as a poll shows it."""

    job_id: int
    study_instance_uid: str
    pipeline_name: str
    state: str
    error: str
    artifacts: tuple[tuple[int, str, str], ...]  # (artifact id, kind, path under data_dir)


def queue_prediction(
    session: Session,
    study_uid: str,
    *,
    sources: Sequence[str],
    pipeline_name: str,
    pipeline_version: str,
    review_required: bool,
    destinations: Sequence[str],
    max_attempts: int,
    actor: str,
    now: datetime,
) -> int:
    """Queue ``pipeline_name`` for the study this request imported; the job's id.

    The study must have been created by this kind of request (``sources``): a study the node
    already held is not re-run behind its users' backs (409). The study is marked complete in the
    same transaction, so the completion sweep never routes it to other pipelines as well."""
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    if study is None:
        raise PredictionRefused(400, f"study {study_uid} was not imported")
    if study.source not in sources:
        raise PredictionRefused(
            409,
            f"study {study_uid} is already on the node (source {study.source}); "
            "its results are at /api/studies/{uid}/results",
        )
    existing = session.scalar(
        select(Job.id).where(
            Job.study_pk == study.id,
            Job.pipeline_name == pipeline_name,
            Job.result_version == study.result_version,
        )
    )
    if existing is not None:
        raise PredictionRefused(
            409,
            f"study {study_uid} is already being predicted with {pipeline_name} (job {existing})",
        )
    if study.state == StudyState.RECEIVING.value:
        study.state = StudyState.COMPLETE.value
        study.completed_at = now
        study.completion_reason = "api predict"
        study.complete_requested = False
    job = add_queued_job(
        session,
        study_pk=study.id,
        pipeline_name=pipeline_name,
        pipeline_version=pipeline_version,
        result_version=study.result_version,
        destinations=destinations,
        review_required=review_required,
        max_attempts=max_attempts,
        now=now,
        detail=f"api predict: study {study_uid} pipeline {pipeline_name} v{pipeline_version}"
        f" destinations {list(destinations) or 'none'}",
        actor=actor,
    )
    return job.id


def prediction_states(session: Session, job_ids: Sequence[int]) -> list[PredictionState]:
    """The jobs' states in the order asked (a job removed since is left out)."""
    jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(list(job_ids))))}
    out = []
    for job_id in job_ids:
        job = jobs.get(job_id)
        if job is None:
            continue
        artifacts = tuple(
            (a.id, a.kind, a.path)
            for a in session.scalars(
                select(Artifact).where(Artifact.job_pk == job.id).order_by(Artifact.id)
            )
        )
        out.append(
            PredictionState(
                job.id,
                job.study.study_instance_uid,
                job.pipeline_name,
                job.state,
                job.error,
                artifacts,
            )
        )
    return out


def stale_transient_studies(session: Session, finished_before: datetime) -> list[str]:
    """Transient studies whose jobs all ended before ``finished_before`` (or that have no job,
    and were last touched then): safe to remove, nobody is waiting on them any more."""
    open_or_recent = (
        select(Job.study_pk)
        .where(
            (Job.state.in_(OPEN_STATES))
            | (func.coalesce(Job.finished_at, Job.created_at) >= finished_before)
        )
        .scalar_subquery()
    )
    return list(
        session.scalars(
            select(Study.study_instance_uid).where(
                Study.source == TRANSIENT_SOURCE,
                Study.last_received_at < finished_before,
                Study.id.not_in(open_or_recent),
            )
        )
    )
