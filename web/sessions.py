"""Console sessions on the server: the cookie carries a random id and nothing else.

``ServerSessions`` (ASGI middleware) looks the id up in ``web_sessions`` once per request, ends the
session there when its idle or absolute lifetime has passed, and exposes the row's ``data`` as
``request.session`` (flash messages, a secret shown once: they live in the row, never in the
browser). When the response starts it writes ``data`` back if a route changed it and refreshes the
last-seen time at most once a minute. Routes start and end sessions with :func:`begin` and
:func:`end` inside their own transaction, so a login or logout is committed with its audit row.

An anonymous visitor gets an id too (a CSRF token is derived from it for the login form) but no row
until there is something to keep, so fetching the login page costs the database nothing.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from anyio import to_thread
from fastapi import Request
from sqlalchemy.orm import Session
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.db.repositories import web_sessions

if TYPE_CHECKING:
    from web.deps import WebState

SESSION_COOKIE = "pacsnode_session"
SCOPE_KEY = "pacsnode.session"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)
_UNTRACKED_PREFIXES = ("/static/", "/static-docs/")


@dataclass
class SessionHandle:
    """This request's view of its session; ``data`` is the very dict behind ``request.session``."""

    token: str | None = None
    user_pk: int | None = None
    has_row: bool = False
    seen_at: datetime | None = None
    data: dict[str, Any] = field(default_factory=dict)
    loaded: str = "{}"
    set_cookie: bool = False
    clear_cookie: bool = False

    def ensure_token(self) -> str:
        """The session id, made now for a first-time visitor (sent with this response)."""
        if self.token is None:
            self.token = new_session_id()
            self.set_cookie, self.clear_cookie = True, False
        return self.token


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def handle(request: Request) -> SessionHandle:
    found: SessionHandle = request.scope[SCOPE_KEY]
    return found


def lifetime(state: WebState) -> web_sessions.Lifetime:
    web = state.settings.web
    return web_sessions.Lifetime(
        idle=timedelta(minutes=web.session_idle_minutes),
        absolute=timedelta(hours=web.session_absolute_hours),
    )


def begin(request: Request, session: Session, user_pk: int, now: datetime) -> None:
    """Log this browser in under a fresh id (the old one, possibly planted, is ended)."""
    current = handle(request)
    if current.has_row and current.token is not None:
        web_sessions.end(session, current.token)
    web_sessions.purge_expired(session, lifetime(request.app.state.web), now)
    token = new_session_id()
    web_sessions.create(session, token, user_pk=user_pk, now=now)
    current.data.clear()
    current.token, current.user_pk, current.has_row, current.seen_at = token, user_pk, True, now
    current.loaded, current.set_cookie, current.clear_cookie = "{}", True, False


def end(request: Request, session: Session) -> None:
    """Log this browser out: its row is deleted, so the id is worthless wherever it was copied."""
    current = handle(request)
    if current.token is not None:
        web_sessions.end(session, current.token)
    current.data.clear()
    current.token, current.user_pk, current.has_row, current.seen_at = None, None, False, None
    current.loaded, current.set_cookie, current.clear_cookie = "{}", False, True


def _snapshot(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, default=str)


class ServerSessions:
    """Load the session before the app runs, store it when the response starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: WebState = scope["app"].state.web
        current = SessionHandle()
        if not scope["path"].startswith(_UNTRACKED_PREFIXES):
            token = Request(scope).cookies.get(SESSION_COOKIE)
            if token and _TOKEN_RE.match(token):
                current = await to_thread.run_sync(_load, state, token)
        scope["session"] = current.data
        scope[SCOPE_KEY] = current

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie = await to_thread.run_sync(_store, state, current)
                if cookie:
                    MutableHeaders(scope=message).append("set-cookie", cookie)
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _load(state: WebState, token: str) -> SessionHandle:
    now = state.clock()
    with state.db.read() as session:
        row = web_sessions.find(session, token)
        if row is None:  # an anonymous visitor's id (or one already ended): no authority
            return SessionHandle(token=token)
        expired = lifetime(state).expired(row, now)
        found = SessionHandle(
            token=token,
            user_pk=row.user_pk,
            has_row=True,
            seen_at=row.last_seen_at,
            data=dict(row.data or {}),
        )
    if expired:
        with state.db.write() as session:
            web_sessions.end(session, token)
        return SessionHandle(clear_cookie=True)  # a fresh id is made if this response needs one
    found.loaded = _snapshot(found.data)
    return found


def _touch_interval(state: WebState) -> timedelta:
    return min(timedelta(minutes=1), lifetime(state).idle / 10)


def _store(state: WebState, current: SessionHandle) -> str | None:
    """Persist what changed; the Set-Cookie value when the browser must learn a new id."""
    now = state.clock()
    changed = _snapshot(current.data) != current.loaded
    if current.has_row and current.token is not None:
        stale = current.seen_at is None or now - current.seen_at >= _touch_interval(state)
        if changed or stale:
            with state.db.write() as session:
                web_sessions.save(
                    session,
                    current.token,
                    data=current.data if changed else None,
                    seen_at=now if stale else None,
                )
    elif changed and current.data:  # an anonymous page left a message for the next one
        token = current.ensure_token()
        with state.db.write() as session:
            web_sessions.create(session, token, user_pk=None, now=now, data=current.data)
    return _cookie(state, current)


def _cookie(state: WebState, current: SessionHandle) -> str | None:
    web = state.settings.web
    tail = "; Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if web.secure_cookies else "")
    if current.set_cookie and current.token is not None:
        max_age = int(web.session_absolute_hours * 3600)
        return f"{SESSION_COOKIE}={current.token}; Max-Age={max_age}{tail}"
    if current.clear_cookie:
        return f'{SESSION_COOKIE}=""; Max-Age=0{tail}'
    return None
