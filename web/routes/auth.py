"""Login, logout, password reset, self-registration (when enabled) and changing one's password.

Failures are deliberately uninformative (same message and same argon2 cost for unknown users and
wrong passwords; the same progressive delay for any account name typed, existing or not) so the
forms cannot be used to discover accounts. Sessions are started and ended through
:mod:`web.sessions`; a password changes only through ``users.set_password``, which ends every
session and revokes every reset link of the account.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import Response

from core.config import Settings
from core.domain import Role
from node.db.repositories import audit, throttle
from node.db.repositories import users as user_repo
from web import sessions
from web.deps import (
    SessionDep,
    SessionUser,
    StateDep,
    WebState,
    load_user,
    verify_csrf,
)
from web.mail import MailError, reset_mail_body, send_mail
from web.pages import flash, redirect, render
from web.security import generate_token, hash_password, password_problem, verify_password
from web.throttling import Guard, client_address, wait_message

log = logging.getLogger("pacsnode.web.auth")
router = APIRouter(
    tags=["console: auth"], dependencies=[Depends(verify_csrf)], include_in_schema=False
)
LOGIN_FAILED = "Invalid username or password. Repeated failures make each next attempt wait longer."


def _safe_next(target: str) -> str:
    """Only same-site relative paths may be redirected to after login (no open redirect)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


@router.get("/login")
def login_form(request: Request, next: str = "/") -> Response:  # noqa: A002 - the query name
    return render(request, "login.html", {"next": _safe_next(next)})


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    state: StateDep,
    username: Annotated[str, Form(max_length=256)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form(max_length=2048)] = "/",  # noqa: A002
) -> Response:
    client = client_address(request)
    guard = Guard.from_settings(state.settings.web)
    now = state.clock()
    wait = guard.wait(session, username=username, address=client, now=now)
    if wait:
        audit.record(
            session,
            "auth.login_throttled",
            entity_type="user",
            entity_id=username[:64],
            actor=username[:64] or "anonymous",
            detail=f"client {client}; next attempt in {wait} s",
        )
        return render(
            request,
            "login.html",
            {"error": wait_message(wait), "next": _safe_next(next)},
            status_code=429,
        )
    user = user_repo.get_by_username(session, username)
    password_ok = verify_password(user.password_hash if user else None, password)
    if user is not None and user.active and password_ok:
        user_repo.record_login(session, user, now)
        guard.succeeded(session, username=username)
        audit.record(
            session,
            "auth.login",
            entity_type="user",
            entity_id=user.username,
            actor=user.username,
            detail=f"client {client}",
        )
        sessions.begin(request, session, user.id, now)
        return redirect(_safe_next(next))
    guard.failed(session, username=username, address=client, now=now)
    audit.record(
        session,
        "auth.login_failed",
        entity_type="user",
        entity_id=username[:64],
        actor=username[:64] or "anonymous",
        detail=f"client {client}",
    )
    return render(
        request, "login.html", {"error": LOGIN_FAILED, "next": _safe_next(next)}, status_code=401
    )


@router.post("/logout")
def logout(request: Request, session: SessionDep, user: SessionUser) -> Response:
    audit.record(
        session, "auth.logout", entity_type="user", entity_id=user.username, actor=user.username
    )
    sessions.end(request, session)
    return redirect("/login")


# -- password reset ---------------------------------------------------------------------------


def public_base_url(settings: Settings) -> str:
    """The console's address for links sent out, from settings only: never from the request's
    Host header, which an attacker could set to receive someone else's reset token."""
    return settings.web.base_url or f"http://{settings.web_host}:{settings.web_port}"


def reset_link(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/password/reset?token={token}"


@router.get("/password/forgot")
def forgot_form(request: Request, state: StateDep) -> Response:
    return render(request, "forgot.html", {"smtp": state.settings.smtp is not None})


def _mail_reset_link(state: WebState, login: str) -> None:
    """The outbox job behind "forgot password": look the account up, issue a link, mail it."""
    smtp = state.settings.smtp
    if smtp is None:
        return
    ttl = timedelta(seconds=state.settings.web.reset_token_ttl_s)
    token = generate_token()
    with state.db.write() as session:
        user = user_repo.get_by_username(session, login) or user_repo.get_by_email(session, login)
        if user is None or not user.active or not user.email:
            return
        user_repo.create_reset_token(session, user, token, ttl)
        username, email = user.username, user.email
    base = public_base_url(state.settings)
    body = reset_mail_body(username, reset_link(base, token), ttl.total_seconds() / 60)
    try:
        send_mail(smtp, email, "pacsnode password reset", body)
    except MailError as exc:
        log.error("password reset mail for %s failed: %s", username, exc)
        action, detail = "auth.reset_mail_failed", str(exc)
    else:
        action, detail = "auth.reset_requested", "mailed"
    with state.db.write() as session:
        audit.record(session, action, entity_type="user", entity_id=username, detail=detail)


@router.post("/password/forgot")
def forgot(
    request: Request,
    session: SessionDep,
    state: StateDep,
    login: Annotated[str, Form(max_length=256)],
) -> Response:
    """Answers the same, in the same time, for every ``login``: the lookup and the mail happen in
    the outbox after the response."""
    if state.settings.smtp is None:
        return render(
            request,
            "forgot.html",
            {
                "smtp": False,
                "error": "Mail is not configured on "
                "this node: ask an administrator for a reset link.",
            },
            status_code=400,
        )
    client = client_address(request)
    guard = Guard.from_settings(state.settings.web)
    now = state.clock()
    wait = guard.wait(session, username=None, address=client, now=now)
    if wait:
        return render(
            request,
            "forgot.html",
            {"smtp": True, "error": wait_message(wait)},
            status_code=429,
        )
    # each request spends from the address's budget, like a failed login
    guard.failed(session, username=None, address=client, now=now)
    state.outbox.submit(lambda: _mail_reset_link(state, login))
    return render(request, "forgot.html", {"smtp": True, "sent": True})


@router.get("/password/reset")
def reset_form(request: Request, session: SessionDep, state: StateDep, token: str = "") -> Response:
    if not token or user_repo.find_valid_reset_token(session, token, state.clock()) is None:
        raise HTTPException(400, "This reset link is invalid, expired or already used.")
    return render(request, "reset.html", {"token": token})


@router.post("/password/reset")
def reset(
    request: Request,
    session: SessionDep,
    state: StateDep,
    token: Annotated[str, Form(max_length=256)],
    password: Annotated[str, Form(max_length=2048)],
    password2: Annotated[str, Form(max_length=2048)],
) -> Response:
    now = state.clock()
    row = user_repo.find_valid_reset_token(session, token, now)
    user = user_repo.get_user(session, row.user_pk) if row is not None else None
    if row is None or user is None:
        raise HTTPException(400, "This reset link is invalid, expired or already used.")
    problem = password_problem(password, username=user.username, email=user.email) or (
        None if password == password2 else "The two passwords differ."
    )
    if problem:
        return render(request, "reset.html", {"token": token, "error": problem}, status_code=400)
    user_repo.consume_reset_token(session, row, now)
    user_repo.set_password(session, user, hash_password(password))
    throttle.clear(session, throttle.account_key(user.username))  # the owner proved who they are
    audit.record(
        session,
        "auth.password_reset",
        entity_type="user",
        entity_id=user.username,
        actor=user.username,
    )
    sessions.end(request, session)
    flash(request, "Password changed; log in with the new password.")
    return redirect("/login")


# -- self-registration and own password -------------------------------------------------------


@router.get("/register")
def register_form(request: Request, state: StateDep) -> Response:
    if not state.settings.web.self_registration:
        raise HTTPException(
            404, "Self-registration is disabled; ask an administrator for an account."
        )
    return render(request, "register.html")


@router.post("/register")
def register(
    request: Request,
    session: SessionDep,
    state: StateDep,
    username: Annotated[str, Form(min_length=1, max_length=64)],
    password: Annotated[str, Form(max_length=2048)],
    email: Annotated[str, Form(max_length=255)] = "",
) -> Response:
    if not state.settings.web.self_registration:
        raise HTTPException(
            404, "Self-registration is disabled; ask an administrator for an account."
        )
    problem = password_problem(password, username=username, email=email)
    if problem:
        return render(request, "register.html", {"error": problem}, status_code=400)
    try:
        user_repo.create_user(
            session, username, hash_password(password), role=Role.VIEWER, email=email
        )
    except ValueError as exc:
        return render(request, "register.html", {"error": str(exc)}, status_code=400)
    audit.record(session, "user.register", entity_type="user", entity_id=username, actor=username)
    flash(request, "Account created with the viewer role; log in.")
    return redirect("/login")


@router.get("/account")
def account_form(request: Request, user: SessionUser) -> Response:
    return render(request, "account.html", user=user)


@router.post("/account/password")
def change_password(
    request: Request,
    session: SessionDep,
    state: StateDep,
    principal: SessionUser,
    current: Annotated[str, Form(max_length=2048)],
    password: Annotated[str, Form(max_length=2048)],
) -> Response:
    """Only from a console session (whose form carries the CSRF token): an API token, whatever its
    scopes, must not be able to take over its owner's account. Wrong guesses of the current
    password cost the same delays as failed logins."""
    if principal.via != "session":
        raise HTTPException(403, "Passwords are changed in the console, not with an API token.")
    client = client_address(request)
    guard = Guard.from_settings(state.settings.web)
    now = state.clock()
    wait = guard.wait(session, username=principal.username, address=client, now=now)
    if wait:
        return render(
            request,
            "account.html",
            {"error": wait_message(wait)},
            status_code=429,
            user=principal,
        )
    user = load_user(session, principal)
    if not verify_password(user.password_hash, current):
        guard.failed(session, username=user.username, address=client, now=now)
        audit.record(
            session,
            "auth.password_change_failed",
            entity_type="user",
            entity_id=user.username,
            actor=user.username,
            detail=f"client {client}",
        )
        return render(
            request,
            "account.html",
            {"error": "The current password is wrong."},
            status_code=400,
            user=principal,
        )
    problem = password_problem(password, username=user.username, email=user.email)
    if problem:
        return render(request, "account.html", {"error": problem}, status_code=400, user=principal)
    user_repo.set_password(session, user, hash_password(password))  # ends every session
    guard.succeeded(session, username=user.username)
    audit.record(
        session,
        "auth.password_change",
        entity_type="user",
        entity_id=user.username,
        actor=user.username,
        detail=f"client {client}",
    )
    sessions.begin(request, session, user.id, now)  # this browser stays in, under a new id
    flash(request, "Password changed; every other session was signed out.")
    return redirect("/account")
