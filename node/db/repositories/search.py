"""Study search for the console's study list and the JSON API: filters, sort keys, pages.

Queries return plain rows or small frozen value objects so templates and JSON serialisers never
trigger lazy loads after the session closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from node.db.orm import Job, Study

SortKey = Literal["received", "study_date", "patient", "accession", "state", "modality"]


SORT_COLUMNS = {
    "received": Study.last_received_at,
    "study_date": Study.study_date,
    "patient": Study.patient_name,
    "accession": Study.accession_number,
    "state": Study.state,
    "modality": Study.modalities,
}


@dataclass(frozen=True)
class StudyFilter:
    """Search terms from the study list; empty strings mean "any"."""

    patient: str = ""  # matches patient name or ID, case-insensitive substring
    accession: str = ""
    date_from: str = ""  # YYYYMMDD, inclusive
    date_to: str = ""
    modality: str = ""
    status: str = ""  # a StudyState value, or a JobState / ReviewState of any of its jobs


@dataclass(frozen=True)
class Page:
    items: list[Study]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


# studies imported only to answer an API prediction (``node.jobs.predict``): not in the list
TRANSIENT_SOURCE = "predict"


def _apply_filter(stmt: Select[Any], flt: StudyFilter) -> Select[Any]:
    stmt = stmt.where(Study.source != TRANSIENT_SOURCE)
    if flt.patient:
        pattern = _like(flt.patient)
        stmt = stmt.where(
            or_(
                func.lower(Study.patient_name).like(pattern, escape="\\"),
                func.lower(Study.patient_id).like(pattern, escape="\\"),
            )
        )
    if flt.accession:
        stmt = stmt.where(
            func.lower(Study.accession_number).like(_like(flt.accession), escape="\\")
        )
    if flt.date_from:
        stmt = stmt.where(Study.study_date >= flt.date_from)
    if flt.date_to:
        stmt = stmt.where(Study.study_date <= flt.date_to)
    if flt.modality:
        stmt = stmt.where(func.upper(Study.modalities).like(f"%{flt.modality.upper()[:16]}%"))
    if flt.status:
        job_match = select(Job.id).where(
            Job.study_pk == Study.id, or_(Job.state == flt.status, Job.review_state == flt.status)
        )
        stmt = stmt.where(or_(Study.state == flt.status, job_match.exists()))
    return stmt


def search_studies(
    session: Session,
    flt: StudyFilter,
    *,
    page: int = 1,
    per_page: int = 25,
    sort: str = "received",
    descending: bool = True,
) -> Page:
    page = max(1, page)
    per_page = min(max(1, per_page), 200)
    column = SORT_COLUMNS.get(sort, Study.last_received_at)
    total = int(session.scalar(_apply_filter(select(func.count(Study.id)), flt)) or 0)
    order = column.desc() if descending else column.asc()
    stmt = (
        _apply_filter(select(Study), flt)
        .order_by(order, Study.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    return Page(list(session.scalars(stmt).all()), total, page, per_page)


def job_ids(session: Session, flt: StudyFilter, limit: int) -> list[int]:
    """The jobs of every study the filter matches (all pages, oldest first), at most ``limit``:
    a bulk export from the study list."""
    studies = _apply_filter(select(Study.id), flt).scalar_subquery()
    stmt = select(Job.id).where(Job.study_pk.in_(studies)).order_by(Job.id).limit(limit)
    return list(session.scalars(stmt))
