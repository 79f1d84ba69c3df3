"""Administration: users, API tokens, destinations, the AE allowlist, pipelines/models, routing, audit.

Console edits to processing (pipeline switches, devices, weights, thresholds, destination and
allowlist changes) are stored as ``ConfigOverride`` rows over the YAML configuration, validated
before they are saved so a stored override always applies.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from core.config import CallerAllowEntry, ConfigError
from core.domain import Role
from node.db.repositories import audit, config_overrides, throttle
from node.db.repositories import users as user_repo
from node.db.repositories.config_overrides import (
    ALLOWLIST_OVERRIDE_KEY,
)
from pipelines.spec import PipelineConfig
from web.deps import AdminUser, RowId, SessionDep, StateDep, verify_csrf
from web.integrations import (
    PIPELINE_OVERRIDE_PREFIX,
    model_cards,
    pipeline_classes,
    pipeline_configs,
    validate_pipeline_override,
)
from web.pages import flash, redirect, render
from web.routes.auth import public_base_url, reset_link
from web.security import API_SCOPES, generate_password, generate_token, hash_password
from web.worker_status import worker_status

# where each task keeps the decision threshold the console edits (pipelines/spec.py)
THRESHOLD_PATHS = {
    "segmentation": ("postprocess", "threshold"),
    "classification": ("threshold",),
    "detection": ("score_threshold",),
    "anomaly": ("threshold",),  # empty: each card's calibrated threshold
}
router = APIRouter(
    prefix="/admin",
    tags=["console: admin"],
    dependencies=[Depends(verify_csrf)],
    include_in_schema=False,
)


@router.get("")
def admin_home(user: AdminUser) -> Response:
    return redirect("/admin/users")


# -- users ------------------------------------------------------------------------------------


@router.get("/users")
def users_page(request: Request, session: SessionDep, user: AdminUser) -> Response:
    users = user_repo.list_users(session)
    failed = throttle.failures(session, [throttle.account_key(u.username) for u in users])
    return render(
        request,
        "admin_users.html",
        {
            "users": users,
            "failures": {
                u.username: failed.get(throttle.account_key(u.username), 0) for u in users
            },
            "roles": [r.value for r in Role],
            "secret": request.session.pop("once", None),
        },
        user=user,
    )


@router.post("/users")
def create_user(
    request: Request,
    session: SessionDep,
    user: AdminUser,
    username: Annotated[str, Form(min_length=1, max_length=64)],
    role: Annotated[Role, Form()] = Role.VIEWER,
    email: Annotated[str, Form(max_length=255)] = "",
) -> Response:
    password = generate_password()
    try:
        user_repo.create_user(session, username, hash_password(password), role=role, email=email)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    audit.record(
        session,
        "user.create",
        entity_type="user",
        entity_id=username,
        actor=user.username,
        to_state=role.value,
    )
    request.session["once"] = f"Password for {username} (shown once): {password}"
    return redirect("/admin/users")


def _user_or_404(session: SessionDep, user_id: int) -> Any:
    target = user_repo.get_user(session, user_id)
    if target is None:
        raise HTTPException(404, f"No user {user_id}")
    return target


@router.post("/users/{user_id}/role")
def set_role(
    session: SessionDep, user: AdminUser, user_id: RowId, role: Annotated[Role, Form()]
) -> Response:
    target = _user_or_404(session, user_id)
    if target.id == user.user_id and role is not Role.ADMIN:
        raise HTTPException(409, "You cannot remove your own admin role.")
    audit.record(
        session,
        "user.role",
        entity_type="user",
        entity_id=target.username,
        actor=user.username,
        from_state=target.role,
        to_state=role.value,
    )
    if target.role != role.value:
        target.role = role.value
        user_repo.end_sessions(session, target.id)  # the new role starts with a new login
    return redirect("/admin/users")


@router.post("/users/{user_id}/active")
def set_active(
    session: SessionDep, user: AdminUser, user_id: RowId, active: Annotated[bool, Form()]
) -> Response:
    target = _user_or_404(session, user_id)
    if target.id == user.user_id and not active:
        raise HTTPException(409, "You cannot disable your own account.")
    audit.record(
        session,
        "user.enable" if active else "user.disable",
        entity_type="user",
        entity_id=target.username,
        actor=user.username,
    )
    target.active = active
    if active:
        throttle.clear(session, throttle.account_key(target.username))
    else:
        user_repo.end_sessions(session, target.id)
    return redirect("/admin/users")


@router.post("/users/{user_id}/unlock")
def unlock(session: SessionDep, user: AdminUser, user_id: RowId) -> Response:
    """Forget the account's failed logins, so its next attempt is checked without delay."""
    target = _user_or_404(session, user_id)
    throttle.clear(session, throttle.account_key(target.username))
    audit.record(
        session, "auth.unlock", entity_type="user", entity_id=target.username, actor=user.username
    )
    return redirect("/admin/users")


@router.post("/users/{user_id}/reset-link")
def issue_reset_link(
    request: Request, session: SessionDep, state: StateDep, user: AdminUser, user_id: RowId
) -> Response:
    target = _user_or_404(session, user_id)
    token = generate_token()
    user_repo.create_reset_token(
        session, target, token, timedelta(seconds=state.settings.web.reset_token_ttl_s)
    )
    audit.record(
        session,
        "auth.reset_link_issued",
        entity_type="user",
        entity_id=target.username,
        actor=user.username,
    )
    base = public_base_url(state.settings)
    request.session["once"] = (
        f"Reset link for {target.username} (single use): {reset_link(base, token)}"
    )
    return redirect("/admin/users")


# -- API tokens -------------------------------------------------------------------------------


@router.get("/tokens")
def tokens_page(request: Request, session: SessionDep, user: AdminUser) -> Response:
    users = {u.id: u.username for u in user_repo.list_users(session)}
    return render(
        request,
        "admin_tokens.html",
        {
            "tokens": user_repo.list_api_tokens(session),
            "users": users,
            "scopes": API_SCOPES,
            "secret": request.session.pop("once", None),
        },
        user=user,
    )


@router.post("/tokens")
async def create_token(request: Request, session: SessionDep, user: AdminUser) -> Response:
    form = await request.form()
    name = str(form.get("name", "")).strip()[:64]
    owner_name = str(form.get("owner", "")).strip() or user.username
    scopes = [s for s in form.getlist("scopes") if isinstance(s, str) and s in API_SCOPES]
    if not name or not scopes:
        raise HTTPException(400, "A token needs a name and at least one scope.")
    owner = user_repo.get_by_username(session, owner_name)
    if owner is None:
        raise HTTPException(400, f"No user {owner_name!r}")
    token = generate_token()
    row = user_repo.create_api_token(session, owner, name, token, scopes)
    audit.record(
        session,
        "token.create",
        entity_type="api_token",
        entity_id=row.id,
        actor=user.username,
        detail=f"{name} for {owner.username}: {scopes}",
    )
    request.session["once"] = f"Token {name!r} (shown once): {token}"
    return redirect("/admin/tokens")


@router.post("/tokens/{token_id}/revoke")
def revoke_token(session: SessionDep, user: AdminUser, token_id: RowId) -> Response:
    if user_repo.revoke_api_token(session, token_id) is None:
        raise HTTPException(404, f"No token {token_id}")
    audit.record(
        session, "token.revoke", entity_type="api_token", entity_id=token_id, actor=user.username
    )
    return redirect("/admin/tokens")


# -- the AE allowlist (destinations and routing: web.routes.admin_config) ---------------------------------------------------------------


@router.post("/allowlist")
def set_allowlist(
    session: SessionDep, user: AdminUser, entries: Annotated[str, Form(max_length=20000)] = ""
) -> Response:
    """One ``AE_TITLE`` or ``AE_TITLE@host`` per line; an empty list means "accept any caller"."""
    parsed: list[dict[str, Any]] = []
    for line in entries.splitlines():
        line = line.strip()
        if not line:
            continue
        ae, _, host = line.partition("@")
        ae = ae.strip()
        if not ae or len(ae) > 16 or "\\" in ae or not ae.isprintable():
            raise HTTPException(400, f"{line!r}: an AE title is 1-16 printable characters")
        try:
            entry = CallerAllowEntry(ae_title=ae, host=host.strip() or None)
        except ValidationError as exc:
            reason = exc.errors()[0].get("msg", "invalid host").removeprefix("Value error, ")
            raise HTTPException(400, f"{line!r}: {reason}") from exc
        parsed.append(entry.model_dump())
    config_overrides.set_override(
        session, ALLOWLIST_OVERRIDE_KEY, {"entries": parsed}, user.username
    )
    audit.record(
        session,
        "allowlist.update",
        entity_type="config",
        entity_id=ALLOWLIST_OVERRIDE_KEY,
        actor=user.username,
        detail=f"{len(parsed)} entr(ies)",
    )
    return redirect("/admin/destinations")


# -- pipelines and models ---------------------------------------------------------------------


@router.get("/pipelines")
def pipelines_page(
    request: Request, session: SessionDep, state: StateDep, user: AdminUser
) -> Response:
    context: dict[str, Any] = {"error": None, "pipelines": {}, "cards": {}, "classes": {}}
    context["cards"] = model_cards(state.settings)
    try:
        context["pipelines"] = pipeline_configs(state.settings, session)
    except ConfigError as exc:  # a definition on disk cannot be read: the admin must fix it
        context["error"] = f"pipeline definitions cannot be read: {exc}"
    context["classes"] = {
        n: pipeline_classes(c, context["cards"]) for n, c in context["pipelines"].items()
    }
    context["overrides"] = config_overrides.list_overrides(session, PIPELINE_OVERRIDE_PREFIX)
    context["devices"] = _device_choices(state, session)
    return render(request, "admin_pipelines.html", context, user=user)


def _device_choices(state: StateDep, session: SessionDep) -> list[str]:
    """What a model may be placed on: the devices live workers report, ``cpu`` (always there)
    and ``auto`` (each worker resolves it to its GPU or its CPU). The page adds each member's
    current value, so saving a form never changes a device the admin did not touch."""
    return ["auto", *worker_status(state.settings, session, state.clock()).devices]


def _member_devices(cfg: PipelineConfig) -> dict[tuple[str, str], str]:
    """(task, model) -> device, of one pipeline as it stands (console overrides included)."""
    out: dict[tuple[str, str], str] = {}
    for task_name in ("segmentation", "classification", "detection"):
        task = getattr(cfg.tasks, task_name, None)
        if task is not None:
            out.update({(task_name, m.model): m.device for m in task.members})
    return out


def _check_device(device: str, allowed: list[str], current: str | None, field: str) -> None:
    """Reject a device no live worker has (``cuda`` names ``cuda:0``)."""
    wanted = device.strip().lower()
    if (
        wanted == (current or "").strip().lower()
        or wanted in allowed
        or (wanted == "cuda" and "cuda:0" in allowed)
    ):
        return
    raise HTTPException(
        400,
        f"{field}: no live worker has device {device!r} (available: {', '.join(allowed)});"
        " start a worker on a host that has it first",
    )


@router.post("/pipelines/{name}")
async def update_pipeline(
    request: Request, session: SessionDep, state: StateDep, user: AdminUser, name: str
) -> Response:
    """Form fields: ``enabled``, ``<task>.threshold``, ``<task>.<model>.device`` / ``.weight``."""
    try:
        configs = pipeline_configs(state.settings)
    except ConfigError as exc:
        raise HTTPException(503, f"pipeline definitions cannot be read: {exc}") from exc
    if name not in configs:
        raise HTTPException(404, f"No pipeline {name!r}")
    form = await request.form()
    try:
        current = _member_devices(pipeline_configs(state.settings, session)[name])
    except (ConfigError, KeyError):
        current = _member_devices(configs[name])
    allowed = _device_choices(state, session)
    override: dict[str, Any] = {"enabled": form.get("enabled") == "on"}
    kept = config_overrides.get_override(session, PIPELINE_OVERRIDE_PREFIX + name) or {}
    if "review_required" in kept:  # switched on its own form (web.routes.admin_config)
        override["review_required"] = kept["review_required"]
    tasks: dict[str, Any] = {}
    for key, raw in form.multi_items():
        if key in ("csrf_token", "enabled") or not isinstance(raw, str) or raw.strip() == "":
            continue
        parts = key.split(".")
        try:
            if len(parts) == 2 and parts[1] == "threshold" and parts[0] in THRESHOLD_PATHS:
                *parents, leaf = THRESHOLD_PATHS[parts[0]]
                target = tasks.setdefault(parts[0], {})
                for parent in parents:
                    target = target.setdefault(parent, {})
                target[leaf] = float(raw)
            elif len(parts) == 3 and parts[2] in ("device", "weight"):
                if parts[2] == "device":
                    _check_device(raw, allowed, current.get((parts[0], parts[1])), key)
                value: Any = float(raw) if parts[2] == "weight" else raw.strip()
                members = tasks.setdefault(parts[0], {}).setdefault("members", {})
                members.setdefault(parts[1], {})[parts[2]] = value
            else:
                raise HTTPException(400, f"unknown field {key!r}")
        except ValueError as exc:
            raise HTTPException(400, f"{key}: {exc}") from exc
    if tasks:
        override["tasks"] = tasks
    try:
        validate_pipeline_override(configs[name], override)
    except ConfigError as exc:
        raise HTTPException(400, str(exc)) from exc
    config_overrides.set_override(session, PIPELINE_OVERRIDE_PREFIX + name, override, user.username)
    audit.record(
        session,
        "pipeline.override",
        entity_type="pipeline",
        entity_id=name,
        actor=user.username,
        detail=str(override),
    )
    flash(request, f"Pipeline {name} updated.")
    return redirect("/admin/pipelines")


@router.post("/pipelines/{name}/reset")
def reset_pipeline(session: SessionDep, user: AdminUser, name: str) -> Response:
    config_overrides.delete_override(session, PIPELINE_OVERRIDE_PREFIX + name)
    audit.record(
        session,
        "pipeline.override_removed",
        entity_type="pipeline",
        entity_id=name,
        actor=user.username,
    )
    return redirect("/admin/pipelines")


# -- audit ----------------------------------------------------------------


@router.get("/audit")
def audit_page(
    request: Request,
    session: SessionDep,
    user: AdminUser,
    actor: Annotated[str, Query(max_length=128)] = "",
    action: Annotated[str, Query(max_length=64)] = "",
    entity_type: Annotated[str, Query(max_length=32)] = "",
    entity_id: Annotated[str, Query(max_length=128)] = "",
    since: date | None = None,
    page: Annotated[int, Query(ge=1, le=100000)] = 1,
) -> Response:
    events = audit.search_audit(
        session,
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        since=since,
        limit=100,
        offset=(page - 1) * 100,
    )
    return render(
        request,
        "admin_audit.html",
        {
            "events": events,
            "page": page,
            "filters": {
                "actor": actor,
                "action": action,
                "entity_type": entity_type,
                "entity_id": entity_id,
                "since": since.isoformat() if since else "",
            },
        },
        user=user,
    )
