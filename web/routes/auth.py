"""Login, logout, password reset, self-registration (when enabled) and changing one's password.

Failures are deliberately uninformative (same message and same argon2 cost for unknown users, wrong
passwords and locked accounts) so the form cannot be used to discover accounts.
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
from node.db.orm import utcnow
from node.db.repositories import audit
from node.db.repositories import users as user_repo
from web.deps import SessionDep, SessionUser, StateDep, load_user, verify_csrf
from web.mail import MailError, reset_mail_body, send_mail
from web.pages import flash, redirect, render
from web.security import (
    generate_token,
    hash_password,
    new_csrf_token,
    password_fingerprint,
    password_problem,
    verify_password,
)

log = logging.getLogger("pacsnode.web.auth")
router = APIRouter(
    tags=["console: auth"], dependencies=[Depends(verify_csrf)], include_in_schema=False
)
LOGIN_FAILED = "Invalid username or password. Repeated failures lock the account for a while."


def _safe_next(target: str) -> str:
    """Only same-site relative paths may be redirected to after login (no open redirect)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


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
    client = _client(request)
    web = state.settings.web
    if state.throttle.blocked(client):
        audit.record(
            session,
            "auth.login_throttled",
            entity_type="user",
            entity_id=username[:64],
            actor=username[:64] or "anonymous",
            detail=f"client {client}",
        )
        return render(
            request,
            "login.html",
            {
                "error": "Too many failed logins from this address; wait a few minutes.",
                "next": _safe_next(next),
            },
            status_code=429,
        )
    now = utcnow()
    user = user_repo.get_by_username(session, username)
    password_ok = verify_password(user.password_hash if user else None, password)
    if user is not None and user.active and password_ok and not user_repo.is_locked(user, now):
        user_repo.record_login(session, user, now)
        audit.record(
            session,
            "auth.login",
            entity_type="user",
            entity_id=user.username,
            actor=user.username,
            detail=f"client {client}",
        )
        state.throttle.reset(client)
        request.session.clear()
        request.session.update(
            {
                "uid": user.id,
                "pwv": password_fingerprint(user.password_hash),
                "seen": int(now.timestamp()),
                "csrf": new_csrf_token(),
            }
        )
        return redirect(_safe_next(next))
    state.throttle.record_failure(client)
    detail = f"client {client}"
    if user is not None and user_repo.is_locked(user, now):
        detail += "; account locked"
    elif user is not None and user.active:
        locked = user_repo.record_failed_login(
            session,
            user,
            max_failures=web.login_max_failures,
            lockout=timedelta(seconds=web.login_lockout_s),
            now=now,
        )
        if locked:
            audit.record(
                session,
                "auth.lockout",
                entity_type="user",
                entity_id=user.username,
                detail=f"locked for {web.login_lockout_s:g} s",
            )
    audit.record(
        session,
        "auth.login_failed",
        entity_type="user",
        entity_id=username[:64],
        actor=username[:64] or "anonymous",
        detail=detail,
    )
    return render(
        request, "login.html", {"error": LOGIN_FAILED, "next": _safe_next(next)}, status_code=401
    )


@router.post("/logout")
def logout(request: Request, session: SessionDep, user: SessionUser) -> Response:
    audit.record(
        session, "auth.logout", entity_type="user", entity_id=user.username, actor=user.username
    )
    request.session.clear()
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


@router.post("/password/forgot")
def forgot(
    request: Request,
    session: SessionDep,
    state: StateDep,
    login: Annotated[str, Form(max_length=256)],
) -> Response:
    smtp = state.settings.smtp
    if smtp is None:
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
    client = _client(request)
    if state.throttle.blocked(client):
        return render(
            request,
            "forgot.html",
            {"smtp": True, "error": "Too many requests from this address; wait a few minutes."},
            status_code=429,
        )
    state.throttle.record_failure(client)  # each request spends from the same budget as logins
    user = user_repo.get_by_username(session, login) or user_repo.get_by_email(session, login)
    if user is not None and user.active and user.email:
        token = generate_token()
        ttl = timedelta(seconds=state.settings.web.reset_token_ttl_s)
        user_repo.create_reset_token(session, user, token, ttl)
        base = public_base_url(state.settings)
        try:
            send_mail(
                smtp,
                user.email,
                "pacsnode password reset",
                reset_mail_body(user.username, reset_link(base, token), ttl.total_seconds() / 60),
            )
        except MailError as exc:
            log.error("password reset mail for %s failed: %s", user.username, exc)
            audit.record(
                session,
                "auth.reset_mail_failed",
                entity_type="user",
                entity_id=user.username,
                detail=str(exc),
            )
        else:
            audit.record(
                session,
                "auth.reset_requested",
                entity_type="user",
                entity_id=user.username,
                detail="mailed",
            )
    return render(request, "forgot.html", {"smtp": True, "sent": True})


@router.get("/password/reset")
def reset_form(request: Request, session: SessionDep, token: str = "") -> Response:
    if not token or user_repo.find_valid_reset_token(session, token, utcnow()) is None:
        raise HTTPException(400, "This reset link is invalid, expired or already used.")
    return render(request, "reset.html", {"token": token})


@router.post("/password/reset")
def reset(
    request: Request,
    session: SessionDep,
    token: Annotated[str, Form(max_length=256)],
    password: Annotated[str, Form(max_length=2048)],
    password2: Annotated[str, Form(max_length=2048)],
) -> Response:
    now = utcnow()
    row = user_repo.find_valid_reset_token(session, token, now)
    if row is None:
        raise HTTPException(400, "This reset link is invalid, expired or already used.")
    problem = password_problem(password) or (
        None if password == password2 else "The two passwords differ."
    )
    if problem:
        return render(request, "reset.html", {"token": token, "error": problem}, status_code=400)
    user = user_repo.get_user(session, row.user_pk)
    if user is None:
        raise HTTPException(400, "This reset link is invalid, expired or already used.")
    user.password_hash = hash_password(password)
    user.failed_logins = 0
    user.locked_until = None
    user_repo.consume_reset_token(session, row, now)
    audit.record(
        session,
        "auth.password_reset",
        entity_type="user",
        entity_id=user.username,
        actor=user.username,
    )
    request.session.clear()
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
    problem = password_problem(password)
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
    principal: SessionUser,
    current: Annotated[str, Form(max_length=2048)],
    password: Annotated[str, Form(max_length=2048)],
) -> Response:
    user = load_user(session, principal)
    if not verify_password(user.password_hash, current):
        return render(
            request,
            "account.html",
            {"error": "The current password is wrong."},
            status_code=400,
            user=principal,
        )
    problem = password_problem(password)
    if problem:
        return render(request, "account.html", {"error": problem}, status_code=400, user=principal)
    user.password_hash = hash_password(password)
    audit.record(
        session,
        "auth.password_change",
        entity_type="user",
        entity_id=user.username,
        actor=user.username,
    )
    request.session["pwv"] = password_fingerprint(user.password_hash)
    flash(request, "Password changed.")
    return redirect("/account")
