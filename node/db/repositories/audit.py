"""The audit trail: one row per state transition or user action, written in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Select, and_, select
from sqlalchemy.orm import Session

from node.db.orm import AuditEvent, utcnow


def record(
    session: Session,
    action: str,
    *,
    entity_type: str = "",
    entity_id: str | int = "",
    from_state: str = "",
    to_state: str = "",
    actor: str = "system",
    detail: str = "",
) -> AuditEvent:
    event = AuditEvent(
        action=action,
        entity_type=entity_type,
        entity_id=str(entity_id)[:128],  # the column's width: a peer's over-long UID must fit
        from_state=from_state,
        to_state=to_state,
        actor=actor,
        detail=detail[:4000],
    )
    session.add(event)
    return event


def query(
    session: Session,
    *,
    entity_type: str | None = None,
    entity_id: str | int | None = None,
    action: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    limit: int = 200,
    offset: int = 0,
) -> Sequence[AuditEvent]:
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc())
    if entity_type:
        stmt = stmt.where(AuditEvent.entity_type == entity_type)
    if entity_id is not None:
        stmt = stmt.where(AuditEvent.entity_id == str(entity_id))
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    if actor:
        stmt = stmt.where(AuditEvent.actor == actor)
    if since is not None:
        stmt = stmt.where(AuditEvent.at >= since)
    return session.scalars(stmt.limit(limit).offset(offset)).all()


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
