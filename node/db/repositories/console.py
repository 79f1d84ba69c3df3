"""Every query behind the web console and the JSON API: study search, dashboard figures, charts.

Queries return plain rows or small frozen value objects so templates and JSON serialisers never
trigger lazy loads after the session closed. Aggregations that are awkward in portable SQL (median,
histograms over JSON fields) are done in Python over a bounded window of recent jobs.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session, selectinload

from core.config import CallerAllowEntry, Settings
from node.db.orm import (
    Artifact,
    AuditEvent,
    ConfigOverride,
    Delivery,
    Instance,
    Job,
    Review,
    Series,
    Study,
    utcnow,
)

log = logging.getLogger(__name__)
SortKey = Literal["received", "study_date", "patient", "accession", "state", "modality"]
SORT_COLUMNS = {
    "received": Study.last_received_at,
    "study_date": Study.study_date,
    "patient": Study.patient_name,
    "accession": Study.accession_number,
    "state": Study.state,
    "modality": Study.modalities,
}
CHART_JOB_WINDOW = 5000  # the dashboard aggregates at most this many recent jobs

log = logging.getLogger(__name__)


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


def _apply_filter(stmt: Select[Any], flt: StudyFilter) -> Select[Any]:
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


def get_study(session: Session, study_uid: str) -> Study | None:
    return session.scalars(
        select(Study)
        .where(Study.study_instance_uid == study_uid)
        .options(
            selectinload(Study.series),
            selectinload(Study.jobs).selectinload(Job.artifacts).selectinload(Artifact.deliveries),
        )
    ).first()


def get_job(session: Session, job_id: int) -> Job | None:
    return session.scalars(
        select(Job)
        .where(Job.id == job_id)
        .options(
            selectinload(Job.study),
            selectinload(Job.artifacts).selectinload(Artifact.deliveries),
        )
    ).first()


def get_artifact(session: Session, artifact_id: int) -> Artifact | None:
    return session.get(Artifact, artifact_id)


def get_delivery(session: Session, delivery_id: int) -> Delivery | None:
    return session.get(Delivery, delivery_id)


def series_instances(session: Session, series_uid: str) -> list[Instance]:
    """Instances of a series in display order (instance number, then arrival)."""
    return list(
        session.scalars(
            select(Instance)
            .join(Series, Instance.series_pk == Series.id)
            .where(Series.series_instance_uid == series_uid)
            .order_by(Instance.instance_number.is_(None), Instance.instance_number, Instance.id)
        ).all()
    )


def get_series(session: Session, series_uid: str) -> Series | None:
    return session.scalars(select(Series).where(Series.series_instance_uid == series_uid)).first()


def list_jobs(
    session: Session, *, state: str = "", limit: int = 100, offset: int = 0
) -> Sequence[Job]:
    stmt = select(Job).options(selectinload(Job.study)).order_by(Job.id.desc())
    if state:
        stmt = stmt.where(Job.state == state)
    return session.scalars(stmt.limit(min(max(limit, 1), 500)).offset(max(offset, 0))).all()


def job_reviews(session: Session, job_id: int) -> Sequence[Review]:
    return session.scalars(select(Review).where(Review.job_pk == job_id).order_by(Review.id)).all()


def add_review(
    session: Session, job: Job, user_id: int | None, decision: str, reason: str = ""
) -> Review:
    review = Review(job_pk=job.id, user_pk=user_id, decision=decision, reason=reason[:4000])
    session.add(review)
    return review


# -- dashboard ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DestinationCounts:
    destination: str
    delivered: int = 0
    held: int = 0
    failed: int = 0
    pending: int = 0


@dataclass(frozen=True)
class DashboardCounts:
    studies_today: int
    studies_total: int
    instances_today: int
    instances_total: int
    jobs_queued: int
    jobs_running: int
    jobs_failed: int
    jobs_succeeded: int
    reviews_pending: int
    median_processing_s: float | None
    destinations: list[DestinationCounts] = field(default_factory=list)


def _start_of_day(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def dashboard_counts(session: Session, now: datetime | None = None) -> DashboardCounts:
    now = now or utcnow()
    today = _start_of_day(now)

    def count(stmt: Select[Any]) -> int:
        return int(session.scalar(stmt) or 0)

    job_states = dict(
        session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).all()
    )
    per_dest: dict[str, dict[str, int]] = {}
    for name, state, n in session.execute(
        select(Delivery.destination_name, Delivery.state, func.count(Delivery.id)).group_by(
            Delivery.destination_name, Delivery.state
        )
    ).all():
        per_dest.setdefault(name, {})[state] = int(n)
    durations = [
        float(d or 0.0)
        for d in session.scalars(
            select(Job.duration_s)
            .where(Job.duration_s.is_not(None), Job.state == "succeeded")
            .order_by(Job.id.desc())
            .limit(CHART_JOB_WINDOW)
        ).all()
    ]
    return DashboardCounts(
        studies_today=count(select(func.count(Study.id)).where(Study.first_received_at >= today)),
        studies_total=count(select(func.count(Study.id))),
        instances_today=count(select(func.count(Instance.id)).where(Instance.received_at >= today)),
        instances_total=count(select(func.count(Instance.id))),
        jobs_queued=int(job_states.get("queued", 0)),
        jobs_running=int(job_states.get("running", 0)),
        jobs_failed=int(job_states.get("failed", 0)),
        jobs_succeeded=int(job_states.get("succeeded", 0)),
        reviews_pending=count(select(func.count(Job.id)).where(Job.review_state == "pending")),
        median_processing_s=statistics.median(durations) if durations else None,
        destinations=[
            DestinationCounts(
                destination=name,
                delivered=states.get("delivered", 0),
                held=states.get("held", 0),
                failed=states.get("failed", 0),
                pending=states.get("pending", 0) + states.get("in_progress", 0),
            )
            for name, states in sorted(per_dest.items())
        ],
    )


@dataclass(frozen=True)
class ChartData:
    """Series for the dashboard charts and ``/api/stats``; every list is (label, value) pairs."""

    studies_per_day: list[tuple[str, int]]
    class_distribution: list[tuple[str, int]]
    confidence_histogram: list[tuple[str, int]]
    severity_distribution: list[tuple[str, int]]
    processing_time_histogram: list[tuple[str, int]]
    devices: dict[str, str]
    fallbacks: list[str]


def _bins(values: list[float], edges: list[float], fmt: str) -> list[tuple[str, int]]:
    counts = [0] * (len(edges) - 1)
    for v in values:
        for i in range(len(edges) - 1):
            last = i == len(edges) - 2
            if edges[i] <= v < edges[i + 1] or (last and v >= edges[i]):
                counts[i] += 1
                break
    return [(fmt.format(edges[i], edges[i + 1]), counts[i]) for i in range(len(counts))]


def chart_data(session: Session, *, days: int = 14, now: datetime | None = None) -> ChartData:
    now = now or utcnow()
    first_day = _start_of_day(now) - timedelta(days=days - 1)
    received = session.scalars(
        select(Study.first_received_at).where(Study.first_received_at >= first_day)
    ).all()
    per_day = Counter(r.date() for r in received)
    studies_per_day = [
        (
            (first_day.date() + timedelta(days=i)).isoformat(),
            per_day.get(first_day.date() + timedelta(days=i), 0),
        )
        for i in range(days)
    ]
    summaries = session.execute(
        select(Job.summary, Job.duration_s)
        .where(Job.state == "succeeded")
        .order_by(Job.id.desc())
        .limit(CHART_JOB_WINDOW)
    ).all()
    classes: Counter[str] = Counter()
    severities: Counter[str] = Counter()
    confidences: list[float] = []
    durations: list[float] = []
    devices: dict[str, str] = {}
    fallbacks: list[str] = []
    for summary, duration in summaries:
        summary = summary if isinstance(summary, dict) else {}
        if summary.get("top_class"):
            classes[str(summary["top_class"])] += 1
        if isinstance(summary.get("confidence"), int | float):
            confidences.append(float(summary["confidence"]))
        severities[str(summary.get("severity") or "None")] += 1
        seconds = summary.get("processing_seconds", duration)
        if isinstance(seconds, int | float):
            durations.append(float(seconds))
        if isinstance(summary.get("devices"), dict):
            for model, device in summary["devices"].items():
                devices.setdefault(str(model), str(device))
        for warning in summary.get("fallbacks") or []:
            if warning not in fallbacks:
                fallbacks.append(str(warning))
    order = ["None", "Low", "Moderate", "High"]
    return ChartData(
        studies_per_day=studies_per_day,
        class_distribution=sorted(classes.items(), key=lambda kv: (-kv[1], kv[0])),
        confidence_histogram=_bins(confidences, [i / 10 for i in range(11)], "{:.1f}-{:.1f}"),
        severity_distribution=[(s, severities.get(s, 0)) for s in order],
        processing_time_histogram=_bins(
            durations, [0, 1, 2, 5, 10, 30, 60, 300, 1e9], "{:g}-{:g}s"
        )[:-1]
        + [(">300s", sum(1 for d in durations if d >= 300))],
        devices=devices,
        fallbacks=fallbacks[:20],
    )


# -- config overrides and audit ----------------------------------------------------------------


def get_override(session: Session, key: str) -> dict[str, Any] | None:
    row = session.get(ConfigOverride, key)
    return dict(row.value) if row is not None else None


def list_overrides(session: Session, prefix: str = "") -> dict[str, dict[str, Any]]:
    stmt = select(ConfigOverride).order_by(ConfigOverride.key)
    if prefix:
        stmt = stmt.where(ConfigOverride.key.startswith(prefix))
    return {row.key: dict(row.value) for row in session.scalars(stmt).all()}


def set_override(session: Session, key: str, value: dict[str, Any], actor: str) -> ConfigOverride:
    row = session.get(ConfigOverride, key)
    if row is None:
        row = ConfigOverride(key=key, value=value, updated_by=actor)
        session.add(row)
    else:
        row.value = value
        row.updated_at = utcnow()
        row.updated_by = actor
    return row


def delete_override(session: Session, key: str) -> None:
    row = session.get(ConfigOverride, key)
    if row is not None:
        session.delete(row)


def audit_query(
    *,
    actor: str = "",
    action: str = "",
    entity_type: str = "",
    entity_id: str = "",
    since: date | None = None,
) -> Select[Any]:
    """Audit events matching the audit page's filters, newest first (the page and its CSV)."""
    conditions = []
    if actor:
        conditions.append(AuditEvent.actor == actor)
    if action:
        conditions.append(AuditEvent.action.startswith(action))
    if entity_type:
        conditions.append(AuditEvent.entity_type == entity_type)
    if entity_id:
        conditions.append(AuditEvent.entity_id == entity_id)
    if since is not None:
        conditions.append(
            AuditEvent.at >= datetime(since.year, since.month, since.day, tzinfo=utcnow().tzinfo)
        )
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc())
    if conditions:
        stmt = stmt.where(and_(*conditions))
    return stmt


def search_audit(
    session: Session,
    *,
    actor: str = "",
    action: str = "",
    entity_type: str = "",
    entity_id: str = "",
    since: date | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Sequence[AuditEvent]:
    stmt = audit_query(
        actor=actor, action=action, entity_type=entity_type, entity_id=entity_id, since=since
    )
    return session.scalars(stmt.limit(min(max(limit, 1), 500)).offset(max(offset, 0))).all()


def held_deliveries(session: Session, job: Job) -> list[Delivery]:
    return list(
        session.scalars(
            select(Delivery)
            .join(Artifact, Delivery.artifact_pk == Artifact.id)
            .where(Artifact.job_pk == job.id, Delivery.state == "held")
        ).all()
    )


DESTINATION_OVERRIDE_PREFIX = "destination:"
ALLOWLIST_OVERRIDE_KEY = "allowed_callers"


def _allow_entry(stored: dict[str, Any]) -> CallerAllowEntry:
    """A stored allowlist row; one saved before hosts were validated keeps its (never matching)
    host rather than being dropped, since dropping the last entry would open the node to all."""
    try:
        return CallerAllowEntry(ae_title=stored["ae_title"], host=stored.get("host"))
    except ValidationError:
        log.warning("allowlist entry %r has an invalid host; it matches no caller", stored)
        return CallerAllowEntry.model_construct(ae_title=stored["ae_title"], host=stored["host"])


def effective_settings(session: Session, settings: Settings) -> Settings:
    """``settings`` with the console's destination switches and AE allowlist applied.

    The console stores these as ConfigOverride rows (``destination:<name>`` -> ``{"enabled":
    bool}``, ``allowed_callers`` -> ``{"entries": [{"ae_title", "host"}]}``); the receiver and the
    dispatcher call this when they (re)load settings so an admin's edit takes effect.
    """
    overrides = list_overrides(session)
    destinations = [
        dest.model_copy(update={"enabled": bool(overrides[key]["enabled"])})
        if (key := DESTINATION_OVERRIDE_PREFIX + dest.name) in overrides
        and "enabled" in overrides[key]
        else dest
        for dest in settings.destinations
    ]
    update: dict[str, Any] = {"destinations": destinations}
    allow = overrides.get(ALLOWLIST_OVERRIDE_KEY)
    if allow is not None:
        update["allowed_callers"] = [_allow_entry(e) for e in allow.get("entries", [])]
    return settings.model_copy(update=update)
