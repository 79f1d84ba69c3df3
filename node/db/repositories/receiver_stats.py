"""Figures for monitoring (``/metrics``), read from the database at scrape time.

The receiver, the workers and the web server are separate processes (often several of each) over
one database, so in-process counters would each see a part. Everything here is computed from rows:
associations and C-STORE statuses from the one audit row each served association leaves
(``record_association``), the rest from instances, jobs and deliveries as they stand.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from node.db.orm import AuditEvent, Delivery, Instance, Job
from node.db.repositories import audit

ASSOCIATION_ACTION = "association.closed"
REFUSED_ACTION = "instance.refused"  # node.ingest.uid_gate: an instance whose UIDs were refused
# job duration histogram bounds in seconds (Prometheus ``le``; +Inf is added by the collector)
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def record_association(
    session: Session, calling_ae: str, peer_host: str, statuses: Mapping[int, int]
) -> None:
    """Audit one served association: who called and how many C-STORE answers of each status."""
    detail = ",".join(f"0x{status:04X}={count}" for status, count in sorted(statuses.items()))
    audit.record(
        session,
        ASSOCIATION_ACTION,
        entity_type="association",
        entity_id=calling_ae or "?",
        actor="receiver",
        detail=f"{peer_host} {detail}".strip(),
    )


def _parse_statuses(detail: str) -> Counter[str]:
    """``"10.0.0.5 0x0000=12,0xA700=1"`` → {"0x0000": 12, "0xA700": 1}; malformed parts ignored."""
    found: Counter[str] = Counter()
    _, _, pairs = detail.partition(" ")
    for pair in pairs.split(","):
        status, sep, count = pair.partition("=")
        if sep and count.isdigit():
            found[status] += int(count)
    return found


@dataclass(frozen=True)
class ReceiverFigures:
    associations: dict[str, int]  # calling AE → associations served
    cstore_statuses: dict[str, int]  # "0x0000" → C-STORE answers with that status
    refused_instances: int  # instances refused before storage (bad UIDs)
    instances: dict[tuple[str, str], int]  # (source, calling AE) → instances stored


def receiver_figures(session: Session) -> ReceiverFigures:
    associations: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    rows = session.execute(
        select(AuditEvent.entity_id, AuditEvent.detail).where(
            AuditEvent.action == ASSOCIATION_ACTION
        )
    )
    for calling_ae, detail in rows:
        associations[calling_ae] += 1
        statuses.update(_parse_statuses(detail))
    refused = session.scalar(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.action == REFUSED_ACTION)
    )
    instances = {
        (source, calling_ae): int(count)
        for source, calling_ae, count in session.execute(
            select(Instance.source, Instance.calling_ae, func.count()).group_by(
                Instance.source, Instance.calling_ae
            )
        )
    }
    return ReceiverFigures(dict(associations), dict(statuses), int(refused or 0), instances)


def jobs_by_state(session: Session) -> dict[tuple[str, str], int]:
    """(pipeline, state) → number of jobs: the queue depth per state and pipeline."""
    stmt = select(Job.pipeline_name, Job.state, func.count()).group_by(Job.pipeline_name, Job.state)
    return {(pipeline, state): int(n) for pipeline, state, n in session.execute(stmt)}


@dataclass(frozen=True)
class DurationHistogram:
    buckets: list[tuple[float, int]]  # (upper bound, cumulative count), without +Inf
    count: int
    total_s: float


def job_durations(
    session: Session, bounds: Sequence[float] = DURATION_BUCKETS
) -> dict[str, DurationHistogram]:
    """Per pipeline, a cumulative histogram of finished jobs' durations, counted by the database."""
    columns = [
        func.sum(case((Job.duration_s <= bound, 1), else_=0)).label(f"le{i}")
        for i, bound in enumerate(bounds)
    ]
    stmt = (
        select(Job.pipeline_name, func.count(), func.sum(Job.duration_s), *columns)
        .where(Job.duration_s.is_not(None))  # set when a run ends
        .group_by(Job.pipeline_name)
    )
    result: dict[str, DurationHistogram] = {}
    for pipeline, count, total, *cumulative in session.execute(stmt):
        buckets = [(bound, int(n or 0)) for bound, n in zip(bounds, cumulative, strict=True)]
        result[pipeline] = DurationHistogram(buckets, int(count), float(total or 0.0))
    return result


def deliveries_by_outcome(session: Session) -> dict[tuple[str, str], int]:
    """(destination, state) → number of deliveries."""
    stmt = select(Delivery.destination_name, Delivery.state, func.count()).group_by(
        Delivery.destination_name, Delivery.state
    )
    return {(dest, state): int(n) for dest, state, n in session.execute(stmt)}
