"""Which queues are in use and which live workers consume them: what ``/api/health`` and the jobs
page report, and the devices the admin may give a model (those some live worker has).

Queues in use are those of the enabled pipelines (with the console's overrides) and, when any
destination is configured, the delivery queue; the workers are the live rows of the worker
registry (``node.db.repositories.workers``), each refreshed by its process's heartbeat. The
DICOM receivers' rows in the same registry (engine ``receiver``) are kept apart: they consume no
queue, and health reports when none of them answers any more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from core.config import ConfigError, Settings
from node.db.repositories import workers as registry
from node.db.repositories.workers import WorkerView
from web.integrations import pipeline_configs


@dataclass(frozen=True)
class QueueStatus:
    name: str
    serves: str  # "pipelines a, b" or "deliveries"
    workers: tuple[str, ...]  # live consumers; empty: nothing takes this queue's work

    @property
    def ok(self) -> bool:
        return bool(self.workers)


@dataclass(frozen=True)
class WorkerStatus:
    workers: list[WorkerView]
    queues: list[QueueStatus]
    receivers: list[WorkerView] = field(default_factory=list)

    @property
    def receiver_problem(self) -> str | None:
        return registry.receivers_problem(self.receivers)

    @property
    def problems(self) -> list[str]:
        return [f"queue {q.name} has no worker" for q in self.queues if not q.ok]

    @property
    def devices(self) -> list[str]:
        """Devices of the live workers, ``cpu`` always among them (a model can run there)."""
        found = registry.live_devices(self.workers)
        return found if "cpu" in found else ["cpu", *found]


def worker_status(settings: Settings, session: Session, now: datetime) -> WorkerStatus:
    views = registry.workers(session, now, settings.jobs.stale_after_s)
    receivers = [w for w in views if w.engine == registry.RECEIVER]
    views = [w for w in views if w.engine != registry.RECEIVER]
    try:
        configs = pipeline_configs(settings, session)
    except ConfigError:  # a broken definition is reported elsewhere; workers are still listed
        configs = {}
    pipelines: dict[str, list[str]] = {}
    for name, cfg in sorted(configs.items()):
        if cfg.enabled:
            pipelines.setdefault(cfg.queue, []).append(name)
    delivery = [settings.dispatch.queue] if settings.destinations else []
    consumers = registry.queue_consumers(pipelines, delivery, views)
    queues = [
        QueueStatus(
            name=queue,
            serves=("pipelines " + ", ".join(pipelines[queue]))
            if queue in pipelines
            else "deliveries",
            workers=tuple(names),
        )
        for queue, names in consumers.items()
    ]
    return WorkerStatus(views, queues, receivers)
