"""Dashboard figures and charts: today's counts per state and destination, two weeks of trends.

Aggregations that are awkward in portable SQL (median, histograms over JSON fields) are done in
Python over a bounded window of recent jobs.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from node.db.orm import Delivery, Instance, Job, Study, utcnow

CHART_JOB_WINDOW = 5000  # the dashboard aggregates at most this many recent jobs


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
        reviews_pending=count(  # a failed job has nothing to review
            select(func.count(Job.id)).where(
                Job.review_state == "pending", Job.state == "succeeded"
            )
        ),
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
