"""Admin actions on accounts and the audit trail: delete a user, edit an e-mail, export the audit.

Kept beside ``web.routes.admin`` (same ``/admin`` prefix, same CSRF guard) so that router stays
the page-per-section one it is. A deletion refuses the caller's own account and the last active
admin, so the node can never be left without someone who can administer it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Query
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import func, select

from core.domain import Role
from node.db.orm import AuditEvent, User
from node.db.repositories import audit
from node.db.repositories import users as user_repo
from web.deps import AdminUser, RowId, SessionDep, StateDep, verify_csrf
from web.pages import redirect

router = APIRouter(
    prefix="/admin",
    tags=["console: admin"],
    dependencies=[Depends(verify_csrf)],
    include_in_schema=False,
)
CSV_COLUMNS = ("id", "at", "actor", "action", "entity_type", "entity_id", "from", "to", "detail")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would run these as formulas


def _user_or_404(session: SessionDep, user_id: int) -> User:
    target = user_repo.get_user(session, user_id)
    if target is None:
        raise HTTPException(404, f"No user {user_id}")
    return target


def _other_active_admins(session: SessionDep, user_id: int) -> int:
    stmt = select(func.count(User.id)).where(
        User.role == Role.ADMIN.value, User.active.is_(True), User.id != user_id
    )
    return int(session.scalar(stmt) or 0)


@router.post("/users/{user_id}/delete")
def delete_user(session: SessionDep, user: AdminUser, user_id: RowId) -> Response:
    """Remove the account with its sessions, tokens and reset links (the database cascades);
    its reviews stay, without the link to the account; its audit rows keep the name."""
    target = _user_or_404(session, user_id)
    if target.id == user.user_id:
        raise HTTPException(409, "You cannot delete your own account.")
    # the caller is an active admin other than the target, so this holds today; it stays as the
    # rule itself should the caller ever be something else (a service token, a CLI)
    if target.role == Role.ADMIN.value and _other_active_admins(session, target.id) == 0:
        raise HTTPException(409, "This is the last active admin; make another admin first.")
    audit.record(
        session,
        "user.delete",
        entity_type="user",
        entity_id=target.username,
        actor=user.username,
        from_state=target.role,
        detail=f"e-mail {target.email or '(none)'}",
    )
    session.delete(target)
    return redirect("/admin/users")


def _valid_email(value: str) -> bool:
    local, at, domain = value.partition("@")
    return bool(at and local and "." in domain.strip(".") and "@" not in domain) and not any(
        c.isspace() for c in value
    )


@router.post("/users/{user_id}/email")
def set_email(
    session: SessionDep,
    user: AdminUser,
    user_id: RowId,
    email: Annotated[str, Form(max_length=255)] = "",
) -> Response:
    """Change (or clear) the address password-reset mails go to; one address, one account."""
    target = _user_or_404(session, user_id)
    email = email.strip()
    if email and not _valid_email(email):
        raise HTTPException(400, f"{email!r} is not an e-mail address")
    holder = user_repo.get_by_email(session, email) if email else None
    if holder is not None and holder.id != target.id:
        raise HTTPException(409, f"{email} is already the e-mail of {holder.username}")
    audit.record(
        session,
        "user.email",
        entity_type="user",
        entity_id=target.username,
        actor=user.username,
        from_state=target.email[:32],
        to_state=email[:32],
    )
    target.email = email
    return redirect("/admin/users")


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def _csv_rows(state: StateDep, filters: dict[str, object]) -> Iterator[str]:
    """The matching events as CSV, newest first, read in batches by a session of its own (the
    response streams after the route's session closed)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    stmt = audit.audit_query(**filters)  # type: ignore[arg-type]
    with state.db.read() as session:
        for event in session.scalars(stmt.execution_options(yield_per=1000)):
            writer.writerow([_cell(v) for v in _fields(event)])
            if buffer.tell() > 64 * 1024:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue()


def _fields(event: AuditEvent) -> tuple[object, ...]:
    at = event.at.isoformat() if event.at else ""
    return (event.id, at, event.actor, event.action, event.entity_type, event.entity_id,
            event.from_state, event.to_state, event.detail)  # fmt: skip


@router.get("/audit.csv")
def audit_csv(
    state: StateDep,
    user: AdminUser,
    actor: Annotated[str, Query(max_length=128)] = "",
    action: Annotated[str, Query(max_length=64)] = "",
    entity_type: Annotated[str, Query(max_length=32)] = "",
    entity_id: Annotated[str, Query(max_length=128)] = "",
    since: date | None = None,
) -> Response:
    """The audit page's events (same filters), all of them, as a spreadsheet-safe CSV."""
    filters: dict[str, object] = {"actor": actor, "action": action, "entity_type": entity_type,
                                  "entity_id": entity_id, "since": since}  # fmt: skip
    name = f"pacsnode-audit-{state.clock().date().isoformat()}.csv"
    return StreamingResponse(
        _csv_rows(state, filters),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
