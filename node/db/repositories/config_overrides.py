"""The console's admin edits as ConfigOverride rows, and the settings they produce.

Destination switches, the AE allowlist and pipeline overrides live in the shared database so every
process reads the same edits (node.overrides applies them to the running stages).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import CallerAllowEntry, Settings
from node.db.orm import ConfigOverride, utcnow

log = logging.getLogger(__name__)

DESTINATION_OVERRIDE_PREFIX = "destination:"


ALLOWLIST_OVERRIDE_KEY = "allowed_callers"


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


def _allow_entry(stored: dict[str, Any]) -> CallerAllowEntry:
    """A stored allowlist row; one saved before hosts were validated keeps its (never matching)
    host rather than being dropped, since dropping the last entry would open the node to all."""
    try:
        return CallerAllowEntry(ae_title=stored["ae_title"], host=stored.get("host"))
    except ValidationError:
        log.warning("allowlist entry %r has an invalid host; it matches no caller", stored)
        return CallerAllowEntry.model_construct(ae_title=stored["ae_title"], host=stored["host"])


def effective_settings(session: Session, settings: Settings) -> Settings:
    """``settings`` with the console's destination switches and AE allowlist applied.

    The console stores these as ConfigOverride rows (``destination:<name>`` -> ``{"enabled":
    bool}``, ``allowed_callers`` -> ``{"entries": [{"ae_title", "host"}]}``); the receiver and the
    dispatcher call this when they (re)load settings so an admin's edit takes effect.
    """
    overrides = list_overrides(session)
    destinations = [
        dest.model_copy(update={"enabled": bool(overrides[key]["enabled"])})
        if (key := DESTINATION_OVERRIDE_PREFIX + dest.name) in overrides
        and "enabled" in overrides[key]
        else dest
        for dest in settings.destinations
    ]
    update: dict[str, Any] = {"destinations": destinations}
    allow = overrides.get(ALLOWLIST_OVERRIDE_KEY)
    if allow is not None:
        update["allowed_callers"] = [_allow_entry(e) for e in allow.get("entries", [])]
    return settings.model_copy(update=update)
