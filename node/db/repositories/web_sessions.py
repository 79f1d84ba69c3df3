"""Console sessions held on the server: the browser keeps a random id, the row keeps the rest.

Only the id's SHA-256 is stored (a copied database does not yield live cookies). Ending a session
deletes its row (logout here; password, role and status changes end all of a user's sessions with
``users.end_sessions``), so a copied cookie stops working at once; idle and absolute lifetimes are checked against the row's own timestamps, never against
anything the browser sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from node.db.orm import WebSession
from node.db.repositories.users import token_digest


@dataclass(frozen=True)
class Lifetime:
    """A session ends after ``idle`` without a request or ``absolute`` after it began."""

    idle: timedelta
    absolute: timedelta

    def expired(self, row: WebSession, now: datetime) -> bool:
        return now - row.last_seen_at > self.idle or now - row.created_at > self.absolute


def create(
    session: Session,
    token: str,
    *,
    user_pk: int | None,
    now: datetime,
    data: dict[str, Any] | None = None,
) -> WebSession:
    row = WebSession(
        token_hash=token_digest(token),
        user_pk=user_pk,
        created_at=now,
        last_seen_at=now,
        data=dict(data or {}),
    )
    session.add(row)
    session.flush()
    return row


def find(session: Session, token: str) -> WebSession | None:
    return session.scalars(
        select(WebSession).where(WebSession.token_hash == token_digest(token))
    ).first()


def save(
    session: Session, token: str, *, data: dict[str, Any] | None, seen_at: datetime | None
) -> int:
    """Store ``data`` and/or a new last-seen time for the row of ``token``; rows updated (0 when
    the session was ended meanwhile, which must not bring it back)."""
    values: dict[str, Any] = {}
    if data is not None:
        values["data"] = data
    if seen_at is not None:
        values["last_seen_at"] = seen_at
    if not values:
        return 0
    result = session.execute(
        update(WebSession).where(WebSession.token_hash == token_digest(token)).values(**values)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def end(session: Session, token: str) -> int:
    result = session.execute(delete(WebSession).where(WebSession.token_hash == token_digest(token)))
    return int(result.rowcount)  # type: ignore[attr-defined]


def purge_expired(session: Session, lifetime: Lifetime, now: datetime) -> int:
    result = session.execute(
        delete(WebSession).where(
            or_(
                WebSession.last_seen_at < now - lifetime.idle,
                WebSession.created_at < now - lifetime.absolute,
            )
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
