"""The console's admin edits, applied to the running stages.

An admin edits destinations (add, edit, delete, enable/disable), routing rules, the AE allowlist
and pipelines (enable/disable, review gate, device and weight per model, thresholds) in the
console; the edits are ConfigOverride rows in the shared database. Every stage — in this process
or another — checks them here, at most every ``REFRESH_S`` seconds, with one cheap query (the rows'
count and newest edit time); the effective settings are rebuilt only when that moved. So an edit
takes effect within seconds, without a restart and without a message bus.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from sqlalchemy.orm import Session

from core.config import ConfigError, Settings
from node.db.engine import Database
from node.db.repositories import config_overrides
from pipelines.spec import PipelineConfig, apply_overrides

log = logging.getLogger(__name__)

PIPELINE_OVERRIDE_PREFIX = "pipeline:"
REFRESH_S = 2.0

# One pipeline's stored edit: the JSON mapping the console saved (nested or dotted config keys).
OverrideValues = dict[str, object]
T = TypeVar("T")


def stored_pipeline_overrides(session: Session) -> dict[str, OverrideValues]:
    """``{pipeline name: override mapping}`` as the console stored them."""
    rows = config_overrides.list_overrides(session, PIPELINE_OVERRIDE_PREFIX)
    return {key.removeprefix(PIPELINE_OVERRIDE_PREFIX): value for key, value in rows.items()}


def pipeline_overrides(db: Database) -> dict[str, OverrideValues]:
    """:func:`stored_pipeline_overrides` read in a transaction of its own."""
    with db.read() as session:
        return stored_pipeline_overrides(session)


def with_overrides(
    base: Mapping[str, PipelineConfig], overrides: Mapping[str, OverrideValues]
) -> dict[str, PipelineConfig]:
    """``base`` pipeline configs with ``overrides`` applied; a stale override (unknown pipeline,
    key or model) is logged and skipped rather than stopping the stage or the page."""
    configs = dict(base)
    for name, value in overrides.items():
        if name not in configs:
            continue
        try:
            configs[name] = apply_overrides(configs[name], value)
        except ConfigError as exc:
            log.warning("ignoring stale override for pipeline %s: %s", name, exc)
    return configs


def effective_pipeline_configs(
    base: Mapping[str, PipelineConfig], db: Database
) -> dict[str, PipelineConfig]:
    """``base`` pipeline configs with the stored overrides applied (see :func:`with_overrides`)."""
    return with_overrides(base, pipeline_overrides(db))


class Refreshing(Generic[T]):
    """A value recomputed from the database at most every ``interval_s`` seconds.

    With ``version``, each refresh first asks for a cheap fingerprint of the inputs and recomputes
    only when it changed. A failed refresh (database briefly unreachable) keeps the last good value.
    """

    def __init__(
        self,
        compute: Callable[[], T],
        interval_s: float = REFRESH_S,
        version: Callable[[], object] | None = None,
    ) -> None:
        self._compute = compute
        self._version = version
        self._interval = interval_s
        self._lock = threading.Lock()
        self._value: T | None = None
        self._seen: object = None
        self._at = -float("inf")

    def get(self) -> T:
        with self._lock:
            value = self._value
            if value is None or time.monotonic() - self._at >= self._interval:
                try:
                    seen = self._version() if self._version is not None else None
                    if value is None or seen is None or seen != self._seen:
                        value = self._compute()
                        self._seen = seen
                except Exception:  # noqa: BLE001 - keep serving on the last good value
                    if value is None:
                        raise
                    log.warning("reading the console's overrides failed; keeping the last ones",
                                exc_info=True)  # fmt: skip
                self._value, self._at = value, time.monotonic()
            return value


def settings_version(db: Database) -> config_overrides.ConfigVersion:
    """The fingerprint of the console's edits (see :func:`config_overrides.config_version`)."""
    with db.read() as session:
        return config_overrides.config_version(session)


def settings_refresher(base: Settings, db: Database) -> Refreshing[Settings]:
    """``base`` with the console's destinations, routing rules and AE allowlist applied, rebuilt
    when an edit is seen (checked every ``REFRESH_S`` seconds)."""

    def compute() -> Settings:
        with db.read() as session:
            return config_overrides.effective_settings(session, base)

    return Refreshing(compute, version=lambda: settings_version(db))
