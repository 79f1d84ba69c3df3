"""Configuration edited in the console: destinations (with their health), routing rules, and the
review gate per pipeline.

Every edit is a ``ConfigOverride`` row over the YAML file, validated before it is stored (by the
models that validate the file, through ``web.config_forms``) and audited in the same transaction.
The receiver, scheduler, worker and dispatcher notice the edit within ``node.overrides.REFRESH_S``
seconds through a cheap version check, without a restart.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from core.config import ConfigError, DestinationSettings, RoutingRule, Settings
from core.domain import DestinationKind
from node.db.repositories import audit, config_overrides
from node.db.repositories import deliveries as delivery_repo
from node.db.repositories import search as study_search
from node.db.repositories.config_overrides import (
    ALLOWLIST_OVERRIDE_KEY,
    DEFINITION,
    DELETED,
    DESTINATION_OVERRIDE_PREFIX,
    ROUTING_OVERRIDE_KEY,
)
from web.config_forms import (
    RULE_LIST_FIELDS,
    FormError,
    check_name,
    destination_from_form,
    rule_from_form,
    stored_destination,
    stored_rules,
)
from web.deps import AdminUser, SessionDep, StateDep, verify_csrf
from web.integrations import (
    PIPELINE_OVERRIDE_PREFIX,
    effective_settings,
    explain_routes,
    ping_destination,
    pipeline_configs,
    validate_pipeline_override,
)
from web.pages import flash, redirect, render

router = APIRouter(
    prefix="/admin",
    tags=["console: configuration"],
    dependencies=[Depends(verify_csrf)],
    include_in_schema=False,
)


def _current(state: StateDep, session: Session) -> Settings:
    """The settings as every stage sees them now: the file with the console's rows applied."""
    return effective_settings(session, state.settings)


def _yaml_names(state: StateDep) -> set[str]:
    return {d.name for d in state.settings.destinations}


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _audit(session: Session, action: str, entity: str, user: AdminUser, detail: str = "") -> None:
    """One audit row per configuration edit; the entity type is the action's first word."""
    entity_type = action.split(".")[0]
    audit.record(
        session,
        action,
        entity_type=entity_type,
        entity_id=entity,
        actor=user.username,
        detail=detail,
    )


# -- destinations ---------------------------------------------------------------------------


@router.get("/destinations")
def destinations_page(
    request: Request, session: SessionDep, state: StateDep, user: AdminUser
) -> Response:
    current = _current(state, session)
    stored = config_overrides.list_overrides(session, DESTINATION_OVERRIDE_PREFIX)
    health = delivery_repo.destination_health(session)
    yaml_names = _yaml_names(state)
    rows = [
        {
            "dest": d,
            "health": health.get(d.name, delivery_repo.DestinationHealth()),
            "origin": "file"
            if DESTINATION_OVERRIDE_PREFIX + d.name not in stored
            else ("file, edited" if d.name in yaml_names else "console"),
        }
        for d in current.destinations
    ]
    deleted = sorted(
        key.removeprefix(DESTINATION_OVERRIDE_PREFIX)
        for key, value in stored.items()
        if value.get(DELETED)
    )
    allow = config_overrides.get_override(session, ALLOWLIST_OVERRIDE_KEY)
    entries = (allow or {}).get("entries", [e.model_dump() for e in state.settings.allowed_callers])
    return render(
        request,
        "admin_destinations.html",
        {
            "rows": rows,
            "deleted": deleted,
            "kinds": [k.value for k in DestinationKind],
            "allowlist": "\n".join(
                e["ae_title"] + (f"@{e['host']}" if e.get("host") else "") for e in entries
            ),
            "allow_overridden": allow is not None,
            "ping": request.session.pop("once", None),
        },
        user=user,
    )


def _destination(state: StateDep, session: Session, name: str) -> DestinationSettings:
    try:
        return _current(state, session).destination(name)
    except KeyError as exc:
        raise HTTPException(404, f"No destination {name!r}") from exc


@router.get("/destinations/{name}/edit")
def edit_destination_page(
    request: Request, session: SessionDep, state: StateDep, user: AdminUser, name: str
) -> Response:
    dest = _destination(state, session, name)
    return render(
        request,
        "admin_destination_edit.html",
        {"dest": dest, "kinds": [k.value for k in DestinationKind]},
        user=user,
    )


def _save_destination(session: Session, dest: DestinationSettings, actor: str) -> None:
    config_overrides.set_override(
        session, DESTINATION_OVERRIDE_PREFIX + dest.name, {DEFINITION: stored_destination(dest)},
        actor,
    )  # fmt: skip


def _described(dest: DestinationSettings) -> str:
    """What the audit keeps of a destination: every field but the secrets."""
    shown = dest.model_dump(mode="json", exclude={"password", "token"}, exclude_defaults=True)
    return str(shown | {"secrets": [k for k in ("password", "token") if getattr(dest, k)]})


@router.post("/destinations")
async def create_destination(
    request: Request, session: SessionDep, state: StateDep, user: AdminUser
) -> Response:
    form = await _form(request)
    try:
        name = check_name(form.get("name", ""), "destination")
        dest = destination_from_form(form, name, None)
    except FormError as exc:
        raise HTTPException(400, str(exc)) from None
    if any(d.name == dest.name for d in _current(state, session).destinations):
        raise HTTPException(409, f"A destination named {dest.name!r} exists; edit it instead.")
    _save_destination(session, dest, user.username)
    _audit(session, "destination.create", dest.name, user, _described(dest))
    flash(request, f"Destination {dest.name} added.")
    return redirect("/admin/destinations")


@router.post("/destinations/{name}")
async def update_destination(
    request: Request, session: SessionDep, state: StateDep, user: AdminUser, name: str
) -> Response:
    previous = _destination(state, session, name)
    form = await _form(request)
    try:
        dest = destination_from_form(form, name, previous)
    except FormError as exc:
        raise HTTPException(400, str(exc)) from None
    _save_destination(session, dest, user.username)
    _audit(session, "destination.update", name, user, _described(dest))
    flash(request, f"Destination {name} saved; the dispatcher uses it within seconds.")
    return redirect("/admin/destinations")


@router.post("/destinations/{name}/delete")
def delete_destination(
    request: Request, session: SessionDep, state: StateDep, user: AdminUser, name: str
) -> Response:
    """Refused while a routing rule names it: the rule would silently lose a destination."""
    current = _current(state, session)
    _destination(state, session, name)
    users = [r.name for r in current.routing if name in r.destinations]
    if users:
        raise HTTPException(
            409, f"Destination {name!r} is used by routing rule(s) {', '.join(users)}."
        )
    key = DESTINATION_OVERRIDE_PREFIX + name
    if name in _yaml_names(state):
        config_overrides.set_override(session, key, {DELETED: True}, user.username)
    else:
        config_overrides.delete_override(session, key)
    _audit(session, "destination.delete", name, user)
    flash(request, f"Destination {name} deleted.")
    return redirect("/admin/destinations")


@router.post("/destinations/{name}/reset")
def reset_destination(
    request: Request, session: SessionDep, state: StateDep, user: AdminUser, name: str
) -> Response:
    """Drop the console's edit (or deletion) of a destination from the file: the file's is back."""
    if name not in _yaml_names(state):
        raise HTTPException(404, f"No destination {name!r} in the configuration file")
    config_overrides.delete_override(session, DESTINATION_OVERRIDE_PREFIX + name)
    _audit(session, "destination.reset", name, user)
    flash(request, f"Destination {name} is the configuration file's again.")
    return redirect("/admin/destinations")


@router.post("/destinations/{name}/test")
def test_destination(
    request: Request, session: SessionDep, state: StateDep, user: AdminUser, name: str
) -> Response:
    """A real check with the destination's sender: C-ECHO, an HTTP request, a folder write."""
    dest = _destination(state, session, name)
    result = ping_destination(dest, timeout_s=min(state.settings.dispatch.timeout_s, 10.0))
    message = f"{name}: {'OK' if result.ok else 'FAILED'} — {result.detail}"
    _audit(session, "destination.test", name, user, message)
    request.session["once"] = message
    return redirect("/admin/destinations")


@router.post("/destinations/{name}/enabled")
def set_destination_enabled(
    session: SessionDep,
    state: StateDep,
    user: AdminUser,
    name: str,
    enabled: Annotated[bool, Form()],
) -> Response:
    dest = _destination(state, session, name)
    key = DESTINATION_OVERRIDE_PREFIX + name
    stored = config_overrides.get_override(session, key) or {}
    if DEFINITION in stored:  # edited in the console: switch its definition, keep the rest
        _save_destination(session, dest.model_copy(update={"enabled": enabled}), user.username)
    else:
        config_overrides.set_override(session, key, {"enabled": enabled}, user.username)
    audit.record(
        session,
        "destination.enabled",
        entity_type="destination",
        entity_id=name,
        actor=user.username,
        to_state=str(enabled).lower(),
    )
    return redirect("/admin/destinations")


# -- routing rules --------------------------------------------------------------------------


def _pipeline_names(state: StateDep) -> list[str] | None:
    try:
        return sorted(pipeline_configs(state.settings))
    except ConfigError:
        return None


@router.get("/routing")
def routing_page(
    request: Request,
    session: SessionDep,
    state: StateDep,
    user: AdminUser,
    study_uid: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    explanation = error = None
    if study_uid:
        try:
            explanation = explain_routes(state.settings, session, study_uid)
        except KeyError:
            error = f"No study with UID {study_uid}"
        except ConfigError as exc:
            error = f"Routing dry-run impossible: pipeline definitions cannot be read: {exc}"
    current = _current(state, session)
    return render(
        request,
        "admin_routing.html",
        {
            "study_uid": study_uid,
            "explanation": explanation,
            "error": error,
            "rules": current.routing,
            "list_fields": RULE_LIST_FIELDS,
            "edited": config_overrides.get_override(session, ROUTING_OVERRIDE_KEY) is not None,
            "pipelines": _pipeline_names(state),
            "destinations": [d.name for d in current.destinations],
            "recent": study_search.search_studies(
                session, study_search.StudyFilter(), per_page=10
            ).items,
        },
        user=user,
    )


def _save_rules(
    session: Session, rules: list[RoutingRule], user: AdminUser, action: str, rule: str
) -> Response:
    config_overrides.set_override(session, ROUTING_OVERRIDE_KEY, stored_rules(rules), user.username)
    _audit(session, action, rule, user, f"{len(rules)} rule(s): {[r.name for r in rules]}")
    return redirect("/admin/routing")


def _rule_form(form: dict[str, str], state: StateDep, current: Settings) -> RoutingRule:
    try:
        return rule_from_form(
            form,
            pipelines=_pipeline_names(state),
            destinations=[d.name for d in current.destinations],
        )
    except FormError as exc:
        raise HTTPException(400, str(exc)) from None


def _index(rules: list[RoutingRule], name: str) -> int:
    for index, rule in enumerate(rules):
        if rule.name == name:
            return index
    raise HTTPException(404, f"No routing rule {name!r}")


@router.post("/routing/rules")
async def add_rule(
    request: Request, session: SessionDep, state: StateDep, user: AdminUser
) -> Response:
    current = _current(state, session)
    rule = _rule_form(await _form(request), state, current)
    rules = list(current.routing)
    if any(r.name == rule.name for r in rules):
        raise HTTPException(409, f"A routing rule named {rule.name!r} exists; edit it instead.")
    return _save_rules(session, [*rules, rule], user, "routing.add", rule.name)


@router.post("/routing/rules/{rule}")
async def update_rule(
    request: Request, session: SessionDep, state: StateDep, user: AdminUser, rule: str
) -> Response:
    current = _current(state, session)
    rules = list(current.routing)
    index = _index(rules, rule)
    edited = _rule_form(await _form(request), state, current)
    if edited.name != rule and any(r.name == edited.name for r in rules):
        raise HTTPException(409, f"A routing rule named {edited.name!r} exists.")
    rules[index] = edited
    return _save_rules(session, rules, user, "routing.update", rule)


@router.post("/routing/rules/{rule}/delete")
def delete_rule(session: SessionDep, state: StateDep, user: AdminUser, rule: str) -> Response:
    rules = list(_current(state, session).routing)
    del rules[_index(rules, rule)]
    return _save_rules(session, rules, user, "routing.delete", rule)


@router.post("/routing/rules/{rule}/move")
def move_rule(
    session: SessionDep,
    state: StateDep,
    user: AdminUser,
    rule: str,
    direction: Annotated[str, Form(pattern="^(up|down)$")],
) -> Response:
    """Rules are tried in order (the first match stops unless its ``stop`` is off)."""
    rules = list(_current(state, session).routing)
    index = _index(rules, rule)
    other = index - 1 if direction == "up" else index + 1
    if 0 <= other < len(rules):
        rules[index], rules[other] = rules[other], rules[index]
    return _save_rules(session, rules, user, f"routing.move_{direction}", rule)


@router.post("/routing/reset")
def reset_rules(session: SessionDep, user: AdminUser) -> Response:
    config_overrides.delete_override(session, ROUTING_OVERRIDE_KEY)
    _audit(session, "routing.reset", ROUTING_OVERRIDE_KEY, user, "back to the configuration file")
    return redirect("/admin/routing")


# -- review gate ----------------------------------------------------------------------------


@router.post("/pipelines/{name}/review")
def set_review_required(
    request: Request,
    session: SessionDep,
    state: StateDep,
    user: AdminUser,
    name: str,
    review_required: Annotated[bool, Form()],
) -> Response:
    """Whether this pipeline's new jobs wait for a radiologist before their results are sent;
    kept in the pipeline's override beside its devices and weights."""
    try:
        configs = pipeline_configs(state.settings)
    except ConfigError as exc:
        raise HTTPException(503, f"pipeline definitions cannot be read: {exc}") from exc
    if name not in configs:
        raise HTTPException(404, f"No pipeline {name!r}")
    key = PIPELINE_OVERRIDE_PREFIX + name
    override: dict[str, Any] = config_overrides.get_override(session, key) or {}
    override["review_required"] = review_required
    try:
        validate_pipeline_override(configs[name], override)
    except ConfigError as exc:
        raise HTTPException(400, str(exc)) from exc
    config_overrides.set_override(session, key, override, user.username)
    audit.record(
        session,
        "pipeline.review_required",
        entity_type="pipeline",
        entity_id=name,
        actor=user.username,
        to_state=str(review_required).lower(),
    )
    flash(request, f"Pipeline {name}: review {'required' if review_required else 'not required'}.")
    return redirect("/admin/pipelines")
