"""The console's admin edits as ConfigOverride rows, and the settings they produce.

Destinations (switches, whole definitions added or edited in the console, deletions), routing
rules, the AE allowlist and pipeline overrides live in the shared database so every process reads
the same edits (node.overrides applies them to the running stages). The YAML file stays the base:
a row overrides it, deleting the row brings the file's value back.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.config import CallerAllowEntry, DestinationSettings, RoutingRule, Settings
from node.db.orm import ConfigOverride, utcnow

log = logging.getLogger(__name__)

DESTINATION_OVERRIDE_PREFIX = "destination:"
ALLOWLIST_OVERRIDE_KEY = "allowed_callers"
ROUTING_OVERRIDE_KEY = "routing"

# A destination row's value is one of:
#   {"enabled": bool}                    the YAML destination, switched on or off
#   {"definition": {DestinationSettings fields}}  added or edited in the console (replaces YAML)
#   {"deleted": true}                    the YAML destination, deleted in the console
DEFINITION, DELETED = "definition", "deleted"
ConfigVersion = tuple[int, datetime | None]


def get_override(session: Session, key: str) -> dict[str, Any] | None:
    row = session.get(ConfigOverride, key)
    return dict(row.value) if row is not None else None


def list_overrides(session: Session, prefix: str = "") -> dict[str, dict[str, Any]]:
    stmt = select(ConfigOverride).order_by(ConfigOverride.key)
    if prefix:
        stmt = stmt.where(ConfigOverride.key.startswith(prefix))
    return {row.key: dict(row.value) for row in session.scalars(stmt).all()}


def set_override(session: Session, key: str, value: dict[str, Any], actor: str) -> ConfigOverride:
    row = session.get(ConfigOverride, key)
    if row is None:
        row = ConfigOverride(key=key, value=value, updated_by=actor)
        session.add(row)
    else:
        row.value = value
        row.updated_at = utcnow()
        row.updated_by = actor
    return row


def delete_override(session: Session, key: str) -> None:
    row = session.get(ConfigOverride, key)
    if row is not None:
        session.delete(row)


def config_version(session: Session) -> ConfigVersion:
    """A cheap fingerprint of every console edit: the row count and the newest ``updated_at``.

    An edit or an insert moves the newest time, a delete changes the count; stages compare it
    every few seconds and rebuild their effective settings only when it moved."""
    count, newest = session.execute(
        select(func.count(), func.max(ConfigOverride.updated_at)).select_from(ConfigOverride)
    ).one()
    return int(count), newest


def _allow_entry(stored: dict[str, Any]) -> CallerAllowEntry:
    """A stored allowlist row; one saved before hosts were validated keeps its (never matching)
    host rather than being dropped, since dropping the last entry would open the node to all."""
    try:
        return CallerAllowEntry(ae_title=stored["ae_title"], host=stored.get("host"))
    except ValidationError:
        log.warning("allowlist entry %r has an invalid host; it matches no caller", stored)
        return CallerAllowEntry.model_construct(ae_title=stored["ae_title"], host=stored["host"])


def effective_destinations(
    yaml_destinations: list[DestinationSettings], overrides: dict[str, dict[str, Any]]
) -> list[DestinationSettings]:
    """The YAML destinations with the console's rows applied: switched, replaced, added (in name
    order, after the file's), deleted. A stored definition that no longer validates (a field
    renamed by an upgrade) is logged and skipped rather than stopping every stage."""
    rows = {
        key.removeprefix(DESTINATION_OVERRIDE_PREFIX): value
        for key, value in overrides.items()
        if key.startswith(DESTINATION_OVERRIDE_PREFIX)
    }
    result: list[DestinationSettings] = []
    for dest in yaml_destinations:
        row = rows.pop(dest.name, None)
        if row is None:
            result.append(dest)
        elif row.get(DELETED):
            continue
        elif DEFINITION in row:
            parsed = _definition(dest.name, row[DEFINITION])
            result.append(parsed or dest)
        elif "enabled" in row:
            result.append(dest.model_copy(update={"enabled": bool(row["enabled"])}))
        else:
            result.append(dest)
    for name, row in sorted(rows.items()):  # added in the console
        if DEFINITION in row and not row.get(DELETED):
            parsed = _definition(name, row[DEFINITION])
            if parsed is not None:
                result.append(parsed)
    return result


def _definition(name: str, stored: dict[str, Any]) -> DestinationSettings | None:
    try:
        return DestinationSettings.model_validate({**stored, "name": name})
    except ValidationError as exc:
        log.warning("ignoring the console's definition of destination %s: %s", name, exc)
        return None


def effective_routing(
    yaml_rules: list[RoutingRule],
    overrides: dict[str, dict[str, Any]],
    destination_names: set[str],
) -> list[RoutingRule]:
    """The console's rule list when it has one (it replaces the file's), else the file's. A rule
    naming a destination that no longer exists keeps working without it (logged)."""
    stored = overrides.get(ROUTING_OVERRIDE_KEY)
    if stored is None:
        rules = yaml_rules
    else:
        rules = []
        for raw in stored.get("rules", []):
            try:
                rules.append(RoutingRule.model_validate(raw))
            except ValidationError as exc:
                log.warning("ignoring a stored routing rule %r: %s", raw.get("name"), exc)
    checked: list[RoutingRule] = []
    for rule in rules:
        unknown = [d for d in rule.destinations if d not in destination_names]
        if unknown:
            log.warning("routing rule %s: unknown destination(s) %s skipped", rule.name, unknown)
            rule = rule.model_copy(
                update={"destinations": [d for d in rule.destinations if d not in unknown]}
            )
        checked.append(rule)
    return checked


def effective_settings(session: Session, settings: Settings) -> Settings:
    """``settings`` with the console's destinations, routing rules and AE allowlist applied.

    The receiver, the scheduler's routing, the worker's delivery planner, the dispatcher and the
    console call this (through :mod:`node.overrides`) so an admin's edit takes effect without a
    restart."""
    overrides = list_overrides(session)
    destinations = effective_destinations(list(settings.destinations), overrides)
    routing = effective_routing(list(settings.routing), overrides, {d.name for d in destinations})
    update: dict[str, Any] = {"destinations": destinations, "routing": routing}
    allow = overrides.get(ALLOWLIST_OVERRIDE_KEY)
    if allow is not None:
        update["allowed_callers"] = [_allow_entry(e) for e in allow.get("entries", [])]
    return settings.model_copy(update=update)
