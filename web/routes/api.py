"""The JSON API (OpenAPI at ``/docs``): health, models, pipelines, studies, results, jobs, stats.

Machine clients authenticate with ``Authorization: Bearer <token>`` (scope ``read``); a logged-in
browser session works too. ``/api/health`` is open so that monitors need no credentials; it names
models, devices and the queues in use with their live workers (status "degraded" and a problem
"queue gpu has no worker" when none consumes one), and the DICOM receivers' heartbeats ("no DICOM
receiver is answering" when none beats: a pool's port accepts connections even with every
process gone), but no patient data.
"""

from __future__ import annotations

import socket
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from core.config import ConfigError
from core.domain import ModelLoadState
from node.db.orm import Job, Study
from node.db.repositories import dashboard as dashboard_repo
from node.db.repositories import jobs as job_repo
from node.db.repositories import model_status as model_status_repo
from node.db.repositories import search as study_search
from node.db.repositories import studies as study_repo
from web.deps import Reader, SessionDep, StateDep
from web.integrations import (
    model_cards,
    pipeline_classes,
    pipeline_configs,
    pipeline_problems,
    refused_model_cards,
)
from web.result_views import review_data
from web.worker_status import worker_status

router = APIRouter(prefix="/api", tags=["api"])


class ModelInfo(BaseModel):
    name: str
    version: str
    task: str
    framework: str
    weights_present: bool = Field(description="the weights file or bundle folder exists")
    last_device: str | None
    classes: list[str]
    load_status: ModelLoadState = Field(
        description="as the workers last reported it: loaded, not loaded yet, or failed"
    )
    error: str = Field("", description="why the model failed (refused card, weights, load)")
    status_worker: str = Field("", description="the worker that reported the status")
    status_at: datetime | None = None


class QueueOut(BaseModel):
    name: str
    serves: str
    workers: list[str] = Field(description="live workers consuming it (registry names)")
    ok: bool = Field(description="false: no live worker takes this queue's work")


class ReceiverOut(BaseModel):
    name: str = Field(description="host:pid of the process running the receiver")
    host: str
    pid: int
    live: bool = Field(description="false: no receiver process of it answered lately")
    last_seen_at: datetime


class HealthOut(BaseModel):
    status: str = Field(description='"ok", or "degraded" with the reasons in problems')
    problems: list[str]
    database: str
    listener: str
    models_available: bool = Field(description="at least one model is not failed")
    models: list[ModelInfo]
    pipeline_problems: dict[str, str] = Field(
        default_factory=dict, description="enabled pipelines that cannot run, with the reason"
    )
    queues: list[QueueOut] = Field(
        description="queues in use (enabled pipelines', the delivery queue) and their workers"
    )
    receivers: list[ReceiverOut] = Field(
        default_factory=list,
        description="DICOM receivers as their heartbeats say (a pool beats while one of its "
        "processes lives); none live: the problem 'no DICOM receiver is answering'",
    )


class PipelineInfo(BaseModel):
    name: str
    version: str
    description: str
    enabled: bool
    review_required: bool
    members: dict[str, list[dict[str, Any]]]
    classes: dict[str, list[str]]


class StudyOut(BaseModel):
    study_instance_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    study_date: str
    study_description: str
    modalities: str
    state: str
    outcome: str  # why a study was skipped, or how many of its jobs failed
    instance_count: int
    last_received_at: datetime


class StudyPage(BaseModel):
    total: int
    page: int
    per_page: int
    items: list[StudyOut]


class JobOut(BaseModel):
    id: int
    study_instance_uid: str
    pipeline_name: str
    pipeline_version: str
    result_version: int
    state: str
    review_state: str
    attempts: int
    error: str
    duration_s: float | None
    created_at: datetime
    finished_at: datetime | None
    summary: dict[str, Any]


class ArtifactOut(BaseModel):
    id: int
    kind: str
    sop_instance_uid: str
    download_url: str
    deliveries: dict[str, str]


class JobResultOut(BaseModel):
    job: JobOut
    artifacts: list[ArtifactOut]
    result: dict[str, Any]


class StudyResultsOut(BaseModel):
    study: StudyOut
    jobs: list[JobResultOut]


class Bucket(BaseModel):
    label: str
    count: int


def _buckets(pairs: list[tuple[str, int]]) -> list[Bucket]:
    return [Bucket(label=label, count=count) for label, count in pairs]


class StatsOut(BaseModel):
    studies_total: int
    instances_total: int
    jobs: dict[str, int]
    median_processing_s: float | None
    timeline: list[Bucket]
    class_distribution: list[Bucket]
    confidence_histogram: list[Bucket]
    severity_distribution: list[Bucket]
    processing_time_histogram: list[Bucket]


def _study_out(study: Study) -> StudyOut:
    return StudyOut.model_validate(study, from_attributes=True)


def _job_out(job: Job) -> JobOut:
    return JobOut(
        id=job.id,
        study_instance_uid=job.study.study_instance_uid,
        pipeline_name=job.pipeline_name,
        pipeline_version=job.pipeline_version,
        result_version=job.result_version,
        state=job.state,
        review_state=job.review_state,
        attempts=job.attempts,
        error=job.error,
        duration_s=job.duration_s,
        created_at=job.created_at,
        finished_at=job.finished_at,
        summary=job.summary or {},
    )


def _listener_state(state: StateDep) -> str:
    host = state.settings.dicom_host
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    try:
        with socket.create_connection((host, state.settings.dicom_port), timeout=0.5):
            return "listening"
    except OSError:
        return "not reachable"


def _models(state: StateDep, session: SessionDep) -> list[ModelInfo]:
    """Every card, refused ones included, with the load status the workers reported; weights
    that are missing now show as failed even before a worker said so."""
    cards = model_cards(state.settings)
    devices = dashboard_repo.chart_data(session, days=1).devices
    reported = model_status_repo.by_name(session)
    out = []
    for name, card in sorted(cards.items()):
        row = reported.get(name)
        present = card.weights_path.exists()  # a MONAI bundle or nnU-Net model is a folder
        load = ModelLoadState(row.state) if row is not None else ModelLoadState.NOT_LOADED
        error = row.error if row is not None else ""
        if not present and load != ModelLoadState.FAILED:
            load, error = ModelLoadState.FAILED, f"weights {card.weights_path} not found"
        out.append(
            ModelInfo(
                name=name,
                version=card.version,
                task=card.task,
                framework=card.framework,
                weights_present=present,
                last_device=devices.get(name),
                classes=list(card.class_names),
                load_status=load,
                error=error,
                status_worker=row.worker if row is not None else "",
                status_at=row.updated_at if row is not None else None,
            )
        )
    for name, message in sorted(refused_model_cards(state.settings).items()):
        if name not in cards:
            out.append(
                ModelInfo(
                    name=name,
                    version="",
                    task="",
                    framework="",
                    weights_present=False,
                    last_device=None,
                    classes=[],
                    load_status=ModelLoadState.FAILED,
                    error=message,
                )
            )
    return out


@router.get("/health", response_model=HealthOut)
def health(session: SessionDep, state: StateDep) -> HealthOut:
    try:
        session.execute(text("select 1"))
        database = "ok"
    except SQLAlchemyError as exc:
        database = f"error: {type(exc).__name__}"
    models = _models(state, session) if database == "ok" else []
    try:
        configs = pipeline_configs(state.settings) if database == "ok" else {}
    except ConfigError as exc:
        configs, broken = {}, {"(definitions)": str(exc)}
    else:
        broken = {}
    broken |= pipeline_problems(configs, {m.name: m.error for m in models})
    problems = [] if database == "ok" else [f"database {database}"]
    problems += [f"pipeline {name}: {reason}" for name, reason in sorted(broken.items())]
    queues: list[QueueOut] = []
    receivers: list[ReceiverOut] = []
    if database == "ok":
        status = worker_status(state.settings, session, state.clock())
        problems += status.problems
        if status.receiver_problem is not None:
            problems.append(status.receiver_problem)
        queues = [QueueOut(**asdict(q), ok=q.ok) for q in status.queues]
        receivers = [
            ReceiverOut(name=r.name, host=r.host, pid=r.pid, live=r.live,
                        last_seen_at=r.last_seen_at)
            for r in status.receivers
        ]  # fmt: skip
    return HealthOut(
        status="degraded" if problems else "ok",
        problems=problems,
        database=database,
        listener=_listener_state(state),
        models_available=any(m.load_status != ModelLoadState.FAILED for m in models),
        models=models,
        pipeline_problems=broken,
        queues=queues,
        receivers=receivers,
    )


@router.get("/models", response_model=list[ModelInfo])
def models(session: SessionDep, state: StateDep, user: Reader) -> list[ModelInfo]:
    return _models(state, session)


@router.get("/pipelines", response_model=list[PipelineInfo])
def pipelines(session: SessionDep, state: StateDep, user: Reader) -> list[PipelineInfo]:
    try:
        configs = pipeline_configs(state.settings, session)
    except ConfigError as exc:  # a definition on disk cannot be read: the admin must fix it
        raise HTTPException(503, f"pipeline definitions cannot be read: {exc}") from exc
    cards = model_cards(state.settings)
    out = []
    for name, cfg in sorted(configs.items()):
        members: dict[str, list[dict[str, Any]]] = {}
        for task_name in ("segmentation", "classification", "detection", "anomaly"):
            task = getattr(cfg.tasks, task_name, None)
            if task is not None:
                members[task_name] = [
                    {"model": m.model, "weight": w, "device": m.device}
                    for m, w in zip(task.members, task.normalised_weights(), strict=True)
                ]
        out.append(
            PipelineInfo(
                name=name,
                version=cfg.version,
                description=cfg.description,
                enabled=cfg.enabled,
                review_required=cfg.review_required,
                members=members,
                classes=pipeline_classes(cfg, cards),
            )
        )
    return out


@router.get("/studies", response_model=StudyPage)
def studies(
    session: SessionDep,
    user: Reader,
    patient: Annotated[str, Query(max_length=64)] = "",
    accession: Annotated[str, Query(max_length=64)] = "",
    date_from: Annotated[str, Query(pattern=r"^\d{0,8}$")] = "",
    date_to: Annotated[str, Query(pattern=r"^\d{0,8}$")] = "",
    modality: Annotated[str, Query(max_length=16)] = "",
    status: Annotated[str, Query(max_length=16)] = "",
    sort: Annotated[
        str, Query(pattern="^(received|study_date|patient|accession|state|modality)$")
    ] = "received",
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    page: Annotated[int, Query(ge=1, le=100000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 25,
) -> StudyPage:
    flt = study_search.StudyFilter(patient, accession, date_from, date_to, modality, status)
    result = study_search.search_studies(
        session, flt, page=page, per_page=per_page, sort=sort, descending=order == "desc"
    )
    return StudyPage(
        total=result.total,
        page=result.page,
        per_page=result.per_page,
        items=[_study_out(s) for s in result.items],
    )


@router.get("/studies/{study_uid}/results", response_model=StudyResultsOut)
def study_results(
    session: SessionDep, state: StateDep, user: Reader, study_uid: str
) -> StudyResultsOut:
    study = study_repo.get_study(session, study_uid, with_results=True)
    if study is None:
        raise HTTPException(404, f"no study {study_uid}")
    jobs = []
    for job in sorted(study.jobs, key=lambda j: j.id):
        artifacts = [
            ArtifactOut(
                id=a.id,
                kind=a.kind,
                sop_instance_uid=a.sop_instance_uid,
                download_url=f"/artifacts/{a.id}/download",
                deliveries={d.destination_name: d.state for d in a.deliveries},
            )
            for a in job.artifacts
        ]
        result = review_data(state.settings, job) if job.state == "succeeded" else {}
        jobs.append(JobResultOut(job=_job_out(job), artifacts=artifacts, result=result))
    return StudyResultsOut(study=_study_out(study), jobs=jobs)


@router.get("/jobs", response_model=list[JobOut])
def jobs(
    session: SessionDep,
    user: Reader,
    state: Annotated[str, Query(pattern="^(|queued|running|succeeded|failed)$")] = "",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[JobOut]:
    return [
        _job_out(j) for j in job_repo.list_jobs(session, state=state, limit=limit, offset=offset)
    ]


@router.get("/stats", response_model=StatsOut)
def stats(
    session: SessionDep, user: Reader, days: Annotated[int, Query(ge=1, le=366)] = 14
) -> StatsOut:
    counts = dashboard_repo.dashboard_counts(session)
    data = dashboard_repo.chart_data(session, days=days)
    return StatsOut(
        studies_total=counts.studies_total,
        instances_total=counts.instances_total,
        jobs={
            "queued": counts.jobs_queued,
            "running": counts.jobs_running,
            "succeeded": counts.jobs_succeeded,
            "failed": counts.jobs_failed,
        },
        median_processing_s=counts.median_processing_s,
        timeline=_buckets(data.studies_per_day),
        class_distribution=_buckets(data.class_distribution),
        confidence_histogram=_buckets(data.confidence_histogram),
        severity_distribution=_buckets(data.severity_distribution),
        processing_time_histogram=_buckets(data.processing_time_histogram),
    )
