"""Delivery queries: claiming due deliveries with a lease, and audited state transitions.

Claiming is the only place two dispatcher processes meet. PostgreSQL locks the candidate rows with
``FOR UPDATE SKIP LOCKED`` (a second dispatcher skips them instead of waiting); SQLite has no row
locks, but :meth:`Database.write` opens with ``BEGIN IMMEDIATE``, so claims are serialised by the
database write lock. Either way a delivery is IN_PROGRESS under one lease owner once claimed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.orm import Session, joinedload

from core.domain import ArtifactKind, DeliveryState
from node.db.orm import Artifact, Delivery, Job
from node.db.repositories import audit

ENTITY = "delivery"
# kinds an SR must not overtake: the SR cites the SEG (and the overlay belongs with it)
SR_PREREQUISITES = (ArtifactKind.SEG.value, ArtifactKind.OVERLAY.value)


def transition(
    session: Session,
    delivery: Delivery,
    to_state: DeliveryState,
    *,
    action: str,
    actor: str = "system",
    detail: str = "",
) -> None:
    """Change a delivery's state and write the audit row in the same transaction."""
    from_state = delivery.state
    delivery.state = to_state.value
    if to_state is DeliveryState.PENDING:
        delivery.published_at = None  # a new attempt: the delivery outbox publishes it again
    audit.record(
        session,
        action,
        entity_type=ENTITY,
        entity_id=delivery.id,
        from_state=from_state,
        to_state=to_state.value,
        actor=actor,
        detail=detail,
    )


def get(session: Session, delivery_id: int) -> Delivery | None:
    return session.get(Delivery, delivery_id, options=[joinedload(Delivery.artifact)])


def for_job(
    session: Session, job_pk: int, states: Collection[DeliveryState] | None = None
) -> Sequence[Delivery]:
    """A job's deliveries in dispatch order (artifact rank, then destination)."""
    stmt = (
        select(Delivery)
        .join(Artifact, Delivery.artifact_pk == Artifact.id)
        .where(Artifact.job_pk == job_pk)
        .options(joinedload(Delivery.artifact))
    )
    if states is not None:
        stmt = stmt.where(Delivery.state.in_([s.value for s in states]))
    rows = session.scalars(stmt).all()
    return sorted(
        rows, key=lambda d: (ArtifactKind(d.artifact.kind).dispatch_rank, d.destination_name, d.id)
    )


def for_artifacts(session: Session, artifact_pks: Collection[int]) -> Sequence[Delivery]:
    if not artifact_pks:
        return []
    return session.scalars(
        select(Delivery).where(Delivery.artifact_pk.in_(list(artifact_pks)))
    ).all()


def _due(now: datetime) -> ColumnElement[bool]:
    """PENDING whose time has come, or IN_PROGRESS whose lease expired (its dispatcher died)."""
    return or_(
        and_(Delivery.state == DeliveryState.PENDING.value, Delivery.next_attempt_at <= now),
        and_(
            Delivery.state == DeliveryState.IN_PROGRESS.value,
            Delivery.lease_expires_at.is_not(None),
            Delivery.lease_expires_at < now,
        ),
    )


def next_due_at(
    session: Session,
    *,
    exclude_destinations: Collection[str] = (),
    only_destination: str | None = None,
    after: datetime | None = None,
) -> datetime | None:
    """When the next delivery falls due (a pending one's retry time, or an expired lease of one
    in progress), only counting times later than ``after`` if given; None when there is none.
    An idle dispatcher sleeps until then."""
    pending = Delivery.state == DeliveryState.PENDING.value
    leased = and_(
        Delivery.state == DeliveryState.IN_PROGRESS.value, Delivery.lease_expires_at.is_not(None)
    )
    due_time = case((pending, Delivery.next_attempt_at), else_=Delivery.lease_expires_at)
    stmt = select(func.min(due_time)).where(or_(pending, leased))
    if exclude_destinations:
        stmt = stmt.where(Delivery.destination_name.not_in(list(exclude_destinations)))
    if only_destination is not None:
        stmt = stmt.where(Delivery.destination_name == only_destination)
    if after is not None:
        stmt = stmt.where(due_time > after)
    return session.scalar(stmt)


def claim_due(
    session: Session,
    *,
    now: datetime,
    limit: int,
    exclude_destinations: Collection[str] = (),
    only_destination: str | None = None,
) -> list[Delivery]:
    """Lock and return due deliveries: PENDING whose time has come, or IN_PROGRESS whose lease
    expired (the dispatcher holding it died). The caller marks them claimed in this transaction.

    An SR is left out while a SEG or overlay delivery of the same job to the same destination is
    neither delivered nor among the rows claimed now (those are sent first, in rank order).
    ``only_destination``: one destination's batch (what a Celery delivery message names)."""
    due = _due(now)
    stmt = select(Delivery).where(due).order_by(Delivery.next_attempt_at, Delivery.id).limit(limit)
    if exclude_destinations:
        stmt = stmt.where(Delivery.destination_name.not_in(list(exclude_destinations)))
    if only_destination is not None:
        stmt = stmt.where(Delivery.destination_name == only_destination)
    stmt = stmt.with_for_update(skip_locked=True, of=Delivery)
    candidates = list(session.scalars(stmt).all())
    if not candidates:
        return []
    artifacts = {
        a.id: a
        for a in session.scalars(
            select(Artifact).where(Artifact.id.in_({d.artifact_pk for d in candidates}))
        ).all()
    }
    claimed_ids = {d.id for d in candidates}
    result: list[Delivery] = []
    for delivery in candidates:
        artifact = artifacts[delivery.artifact_pk]
        if artifact.kind == ArtifactKind.SR.value and _sr_blocked(
            session, delivery, artifact, claimed_ids
        ):
            continue
        result.append(delivery)
    return result


def _sr_blocked(
    session: Session, delivery: Delivery, artifact: Artifact, claimed_ids: set[int]
) -> bool:
    blockers = session.scalars(
        select(Delivery.id)
        .join(Artifact, Delivery.artifact_pk == Artifact.id)
        .where(
            Artifact.job_pk == artifact.job_pk,
            Artifact.kind.in_(SR_PREREQUISITES),
            Delivery.destination_name == delivery.destination_name,
            Delivery.state != DeliveryState.DELIVERED.value,
        )
    ).all()
    return any(b not in claimed_ids for b in blockers)


def prerequisites_of(session: Session, delivery: Delivery) -> Sequence[Delivery]:
    """The SEG/overlay deliveries an SR delivery must follow (same job and destination)."""
    artifact = delivery.artifact
    if artifact.kind != ArtifactKind.SR.value:
        return []
    return session.scalars(
        select(Delivery)
        .join(Artifact, Delivery.artifact_pk == Artifact.id)
        .where(
            Artifact.job_pk == artifact.job_pk,
            Artifact.kind.in_(SR_PREREQUISITES),
            Delivery.destination_name == delivery.destination_name,
        )
    ).all()


def job_of(session: Session, delivery: Delivery) -> Job:
    return session.get_one(Job, delivery.artifact.job_pk)


@dataclass(frozen=True)
class DestinationHealth:
    """How a destination has been doing, from its deliveries: the console's health column."""

    last_success_at: datetime | None = None
    last_error_at: datetime | None = None
    last_error: str = ""
    failed: int = 0  # deliveries that gave up (FAILED), waiting for a resend
    pending: int = 0  # due or retrying


def destination_health(session: Session) -> dict[str, DestinationHealth]:
    """Per destination name: the last delivery stored, the last error (time and text) and the
    failed/pending counts. Two grouped queries and one per destination that ever failed."""
    stats = session.execute(
        select(
            Delivery.destination_name,
            func.max(Delivery.delivered_at),
            func.max(Delivery.last_error_at),
            func.count().filter(Delivery.state == DeliveryState.FAILED.value),
            func.count().filter(Delivery.state == DeliveryState.PENDING.value),
        ).group_by(Delivery.destination_name)
    ).all()
    health: dict[str, DestinationHealth] = {}
    for name, success_at, error_at, failed, pending in stats:
        error = ""
        if error_at is not None:
            error = (
                session.scalar(
                    select(Delivery.last_error)
                    .where(Delivery.destination_name == name, Delivery.last_error_at == error_at)
                    .limit(1)
                )
                or ""
            )
        health[name] = DestinationHealth(success_at, error_at, error, int(failed), int(pending))
    return health
