"""The review worklist: one row per job with its study and AI result, filtered for a radiologist.

Severity and classification live in the job's ``summary`` JSON; they are filtered in SQL through
SQLAlchemy's JSON accessors, which compile to ``json_extract`` on SQLite and ``->>`` on PostgreSQL,
so the filter pages through the database instead of loading every job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, and_, func, or_, select, true
from sqlalchemy.orm import Session

from core.domain import JobState, ReviewState
from node.db.orm import Job, Study

PER_PAGE = 50
WorklistSort = Literal["newest", "oldest", "study_date", "patient"]
SORTS: dict[str, Any] = {
    "newest": Job.id.desc(),
    "oldest": Job.id.asc(),
    "study_date": Study.study_date.desc(),
    "patient": Study.patient_name.asc(),
}


@dataclass(frozen=True)
class WorklistFilter:
    """Empty strings mean "any"."""

    review: str = ""  # a ReviewState value
    severity: str = ""  # Low | Moderate | High
    classification: str = ""  # the top class, exact
    modality: str = ""  # one of the study's modalities
    pipeline: str = ""
    date_from: str = ""  # study date YYYYMMDD, inclusive
    date_to: str = ""
    state: str = ""  # a JobState value; "" = any


@dataclass(frozen=True)
class WorklistRow:
    job_id: int
    state: str
    review_state: str
    pipeline: str
    error: str
    top_class: str
    confidence: float | None
    severity: str
    finding_count: int | None
    finished_at: datetime | None
    study_uid: str
    patient_name: str
    patient_id: str
    accession: str
    study_date: str
    modalities: str


def _conditions(flt: WorklistFilter) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if flt.review:
        where.append(Job.review_state == flt.review)
    if flt.state:
        where.append(Job.state == flt.state)
    if flt.severity:
        where.append(Job.summary["severity"].as_string() == flt.severity)
    if flt.classification:
        where.append(Job.summary["top_class"].as_string() == flt.classification)
    if flt.modality:  # "CT\\SEG": a whole value between backslashes
        padded = "\\" + Study.modalities + "\\"
        where.append(padded.contains("\\" + flt.modality.upper() + "\\", autoescape=True))
    if flt.pipeline:
        where.append(Job.pipeline_name == flt.pipeline)
    if flt.date_from:
        where.append(Study.study_date >= flt.date_from)
    if flt.date_to:
        where.append(Study.study_date <= flt.date_to)
    return where


def _filtered(flt: WorklistFilter) -> Select[Job, Study]:
    return select(Job, Study).join(Study, Study.id == Job.study_pk).where(*_conditions(flt))


def neighbours(
    session: Session, flt: WorklistFilter, job_id: int, *, sort: str = "newest"
) -> tuple[int | None, int | None]:
    """The jobs before and after ``job_id`` in the worklist's order under ``flt``, among those a
    reviewer can open (succeeded). The job itself need not match any more (it was just approved
    and left a "pending" list): it keeps its place in the order, so "next" is the one after it."""
    where = [*_conditions(flt), Job.state == JobState.SUCCEEDED.value]
    order = (SORTS.get(sort, SORTS["newest"]), Job.id.desc())
    listed = (
        select(
            Job.id.label("id"),
            func.lag(Job.id).over(order_by=order).label("before"),
            func.lead(Job.id).over(order_by=order).label("after"),
        )
        .join(Study, Study.id == Job.study_pk)
        .where(or_(and_(true(), *where), Job.id == job_id))
        .subquery()
    )
    row = session.execute(
        select(listed.c.before, listed.c.after).where(listed.c.id == job_id)
    ).first()
    if row is None:
        return None, None
    return row.before, row.after


def _row(job: Job, study: Study) -> WorklistRow:
    summary = job.summary or {}
    confidence = summary.get("confidence")
    findings = summary.get("finding_count")
    return WorklistRow(
        job_id=job.id,
        state=job.state,
        review_state=job.review_state,
        pipeline=job.pipeline_name,
        error=job.error,
        top_class=str(summary.get("top_class") or ""),
        confidence=float(confidence) if isinstance(confidence, int | float) else None,
        severity=str(summary.get("severity") or ""),
        finding_count=int(findings) if isinstance(findings, int) else None,
        finished_at=job.finished_at,
        study_uid=study.study_instance_uid,
        patient_name=study.patient_name,
        patient_id=study.patient_id,
        accession=study.accession_number,
        study_date=study.study_date,
        modalities=study.modalities,
    )


def search(
    session: Session, flt: WorklistFilter, *, sort: str = "newest", page: int = 1
) -> tuple[list[WorklistRow], int]:
    """One page of rows and the total that match."""
    stmt = _filtered(flt)
    total = int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    ordered = stmt.order_by(SORTS.get(sort, SORTS["newest"]), Job.id.desc())
    rows = session.execute(ordered.limit(PER_PAGE).offset((max(page, 1) - 1) * PER_PAGE))
    return [_row(job, study) for job, study in rows], total


def awaiting_review(session: Session) -> int:
    """Finished jobs whose results wait for a radiologist (the nav badge)."""
    stmt = select(func.count(Job.id)).where(
        Job.review_state == ReviewState.PENDING.value, Job.state == JobState.SUCCEEDED.value
    )
    return int(session.scalar(stmt) or 0)


def choices(session: Session) -> dict[str, list[str]]:
    """The values the filters offer: pipelines, classes and modalities that occur."""
    pipelines = session.scalars(select(Job.pipeline_name).distinct().order_by(Job.pipeline_name))
    classes = session.scalars(select(Job.summary["top_class"].as_string()).distinct())
    modalities: set[str] = set()
    for value in session.scalars(select(Study.modalities).distinct()):
        modalities.update(m for m in (value or "").split("\\") if m)
    return {
        "pipelines": list(pipelines),
        "classes": sorted(c for c in classes if c),
        "modalities": sorted(modalities),
    }


def job_ids(session: Session, flt: WorklistFilter, limit: int) -> list[int]:
    """Every job the filter matches (all pages, oldest first), at most ``limit``: a bulk export."""
    stmt = _filtered(flt).with_only_columns(Job.id).order_by(Job.id).limit(limit)
    return list(session.scalars(stmt))
