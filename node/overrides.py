"""The console's admin edits, applied to the running stages.

An admin edits destinations (enable/disable), the AE allowlist and pipelines (enable/disable,
device and weight per model, thresholds) in the console; the edits are ConfigOverride rows in the
shared database. Every stage — in this process or another — reads them here, at most every
``REFRESH_S`` seconds, so an edit takes effect without a restart and without a message bus.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from core.config import ConfigError, Settings
from node.db.engine import Database
from node.db.repositories import config_overrides

log = logging.getLogger(__name__)

PIPELINE_OVERRIDE_PREFIX = "pipeline:"
REFRESH_S = 2.0


def pipeline_overrides(db: Database) -> dict[str, dict[str, Any]]:
    """``{pipeline name: override mapping}`` as the console stored them."""
    with db.read() as session:
        rows = config_overrides.list_overrides(session, PIPELINE_OVERRIDE_PREFIX)
    return {key.removeprefix(PIPELINE_OVERRIDE_PREFIX): value for key, value in rows.items()}


def effective_pipeline_configs(base: Mapping[str, Any], db: Database) -> dict[str, Any]:
    """``base`` pipeline configs with the stored overrides applied; a stale override (unknown
    key or model) is logged and skipped rather than stopping the stage."""
    from pipelines.spec import apply_overrides

    configs = dict(base)
    for name, value in pipeline_overrides(db).items():
        if name not in configs:
            continue
        try:
            configs[name] = apply_overrides(configs[name], value)
        except ConfigError as exc:
            log.warning("ignoring stale override for pipeline %s: %s", name, exc)
    return configs


class Refreshing:
    """A value recomputed from the database at most every ``interval_s`` seconds.

    A failed refresh (database briefly unreachable) keeps the last good value."""

    def __init__(self, compute: Callable[[], Any], interval_s: float = REFRESH_S) -> None:
        self._compute = compute
        self._interval = interval_s
        self._lock = threading.Lock()
        self._value: Any = None
        self._at = -float("inf")

    def get(self) -> Any:
        with self._lock:
            if time.monotonic() - self._at >= self._interval or self._value is None:
                try:
                    self._value = self._compute()
                except Exception:  # noqa: BLE001 - keep serving on the last good value
                    if self._value is None:
                        raise
                    log.warning("reading the console's overrides failed; keeping the last ones",
                                exc_info=True)  # fmt: skip
                self._at = time.monotonic()
            return self._value


def settings_refresher(base: Settings, db: Database) -> Refreshing:
    """``base`` with the console's destination switches and AE allowlist applied."""

    def compute() -> Settings:
        with db.read() as session:
            return config_overrides.effective_settings(session, base)

    return Refreshing(compute)
