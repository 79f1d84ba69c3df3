"""Request-scoped dependencies as ``Annotated`` aliases: the database session, the caller, roles.

A route declares what it needs in its signature (``session: SessionDep, user: CurrentUser``) and
never touches cookies or headers itself. The session commits when the route function returns
(before the response is sent, so a redirect never shows stale data) and rolls back on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from core.config import Settings
from core.domain import Role
from node.db.engine import Database
from node.db.orm import ApiToken, User, utcnow
from node.db.repositories import users as user_repo
from web.mail import MailOutbox
from web.security import csrf_for, csrf_matches
from web.sessions import handle

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# a database row id in a URL: beyond a signed 64-bit integer no row exists (and SQLite would raise)
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]
TOKEN_TOUCH_INTERVAL = timedelta(minutes=1)


@dataclass
class WebState:
    """What every request may need, built once by ``create_app`` and kept on ``app.state.web``."""

    settings: Settings
    db: Database
    templates: Jinja2Templates
    outbox: MailOutbox = field(default_factory=MailOutbox)
    clock: Callable[[], datetime] = utcnow  # tests move time by replacing it


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a console user (session cookie) or a machine client (API token)."""

    user_id: int
    username: str
    role: Role
    via: str  # "session" | "token"
    scopes: tuple[str, ...] = ()

    def has_role(self, *roles: Role) -> bool:
        return self.role in roles


class LoginRequired(Exception):
    """Raised for an anonymous caller; pages redirect to the login form, the API answers 401."""


def web_state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


StateDep = Annotated[WebState, Depends(web_state)]


def get_session(request: Request) -> Iterator[Session]:
    """A read session for safe methods, a committing write session for the others."""
    db = web_state(request).db
    factory = db.read if request.method in SAFE_METHODS else db.write
    with factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def _principal_from_token(request: Request, header: str) -> Principal:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "Authorization must be 'Bearer <token>'")
    db = web_state(request).db
    with db.read() as session:
        owner = user_repo.find_api_token(session, token.strip())
        if owner is None:
            raise HTTPException(401, "invalid or revoked API token")
        principal = Principal(
            owner.user.id,
            owner.user.username,
            Role(owner.user.role),
            "token",
            tuple(owner.token.scopes),
        )
        stale = owner.token.last_used_at is None or (
            utcnow() - owner.token.last_used_at > TOKEN_TOUCH_INTERVAL
        )
        token_id = owner.token.id
    if stale:
        with db.write() as session:
            row = session.get(ApiToken, token_id)
            if row is not None:
                row.last_used_at = utcnow()
    return principal


def _principal_from_cookie(request: Request) -> Principal | None:
    """The session's user; expiry was already enforced by ``ServerSessions`` when it loaded the row."""
    user_id = handle(request).user_pk
    if user_id is None:
        return None
    with web_state(request).db.read() as session:
        user = user_repo.get_user(session, user_id)
        if user is None or not user.active:
            return None
        return Principal(user.id, user.username, Role(user.role), "session")


def optional_user(request: Request) -> Principal | None:
    """The caller if authenticated; cached per request by FastAPI."""
    header = request.headers.get("authorization")
    if header:
        return _principal_from_token(request, header)
    return _principal_from_cookie(request)


OptionalUser = Annotated[Principal | None, Depends(optional_user)]


def current_user(user: OptionalUser) -> Principal:
    if user is None:
        raise LoginRequired()
    return user


CurrentUser = Annotated[Principal, Depends(current_user)]

# set on a dependency that admits API tokens: the scope they need (web.openapi and the tests read it)
TOKEN_SCOPE_ATTR = "token_scope"
# which token scope a role-protected route needs when called with an API token
_SCOPE_FOR_ROLES: dict[frozenset[Role], str] = {
    frozenset({Role.ADMIN}): "admin",
    frozenset({Role.ADMIN, Role.RADIOLOGIST}): "review",
}


def RequireRole(*roles: Role, scope: str | None = None) -> Any:  # noqa: N802 - reads like a type
    """``Annotated[Principal, RequireRole(Role.ADMIN)]``: 403 for callers without one of ``roles``;
    an API token also needs ``scope`` (by default the one that goes with ``roles``)."""
    allowed = frozenset(roles)

    def check(user: CurrentUser) -> Principal:
        if user.role not in allowed:
            raise HTTPException(
                403, f"requires role {' or '.join(sorted(r.value for r in allowed))}"
            )
        if user.via == "token" and scope not in user.scopes:
            raise HTTPException(403, f"this API token lacks the {scope!r} scope")
        return user

    scope = scope or _SCOPE_FOR_ROLES.get(allowed, "read")
    setattr(check, TOKEN_SCOPE_ATTR, scope)
    return Depends(check)


def require_scope(scope: str) -> Callable[[CurrentUser], Principal]:
    """For machine endpoints (the Orthanc hook): only an API token carrying ``scope`` passes; a
    console session, even an admin's, does not (it would be a cookie-authorised, CSRF-free POST)."""

    def check(user: CurrentUser) -> Principal:
        if user.via != "token":
            raise HTTPException(403, f"requires an API token with the {scope!r} scope")
        if scope not in user.scopes:
            raise HTTPException(403, f"this API token lacks the {scope!r} scope")
        return user

    setattr(check, TOKEN_SCOPE_ATTR, scope)
    return check


def token_scope_of(dependant: Any) -> str | None:
    """The API-token scope a route's dependencies demand (None: tokens cannot call it)."""
    for sub in dependant.dependencies:
        scope = getattr(sub.call, TOKEN_SCOPE_ATTR, None) or token_scope_of(sub)
        if scope:
            return str(scope)
    return None


def session_user(user: CurrentUser) -> Principal:
    """For the caller's own account (logout, password): a console session; API tokens, whatever
    their scope, have no business there."""
    if user.via != "session":
        raise HTTPException(403, "this page needs a console session, not an API token")
    return user


SessionUser = Annotated[Principal, Depends(session_user)]


AdminUser = Annotated[Principal, RequireRole(Role.ADMIN)]
Reviewer = Annotated[Principal, RequireRole(Role.ADMIN, Role.RADIOLOGIST)]
Reader = Annotated[Principal, RequireRole(Role.ADMIN, Role.RADIOLOGIST, Role.VIEWER)]
# runs a pipeline on files the caller sends (/api/predict): the roles that may upload studies
Predictor = Annotated[Principal, RequireRole(Role.ADMIN, Role.RADIOLOGIST, scope="predict")]


def csrf_token(request: Request) -> str:
    """The session's CSRF token (anonymous visitors get a session id for the login form)."""
    return csrf_for(web_state(request).settings.secret_key, handle(request).ensure_token())


async def verify_csrf(request: Request) -> None:
    """Router-level guard: every unsafe request from a browser session carries the form's token.

    Bearer-token requests are exempt (no ambient cookie authority to abuse).
    """
    if request.method in SAFE_METHODS or request.headers.get("authorization"):
        return
    given = request.headers.get("x-csrf-token")
    if given is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get("csrf_token")
            given = value if isinstance(value, str) else None
    if not csrf_valid(request, given):
        raise HTTPException(403, "CSRF token missing or invalid; reload the page and try again")


def csrf_valid(request: Request, given: str | None) -> bool:
    """Whether ``given`` is the CSRF token of the request's session (False without a session)."""
    token = handle(request).token
    expected = csrf_for(web_state(request).settings.secret_key, token) if token else None
    return csrf_matches(expected, given)


def load_user(session: Session, principal: Principal) -> User:
    user = user_repo.get_user(session, principal.user_id)
    if user is None:
        raise LoginRequired()
    return user
