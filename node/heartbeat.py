"""A process's heartbeat in the worker registry (``node.db.repositories.workers``).

Every worker process — the local engine's worker stage, a Celery worker, a delivery consumer —
runs one: a daemon thread that rewrites the process's row every ``jobs.heartbeat_s`` seconds and
deletes it on a clean stop. A process killed outright stops beating, and after
``jobs.stale_after_beats`` missed beats health reports its queues as having no worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from node.db.engine import Database
from node.db.orm import utcnow
from node.db.repositories import workers as registry
from node.db.repositories.workers import RECEIVER

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registration:
    """What a process says about itself: queues it consumes and devices it can run models on."""

    name: str
    engine: str
    queues: Sequence[str]
    devices: Sequence[str] = ()
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


class Heartbeat:
    """``start`` beats once at once (so the row exists before work is taken), then every
    ``interval_s`` on a thread; ``stop`` ends the thread and removes the row.

    ``serving``: asked before each beat; while it says False no beat is written, so the row goes
    stale as a dead process's would (the process lives, what it is registered for does not)."""

    def __init__(
        self,
        db: Database,
        registration: Registration,
        interval_s: float,
        serving: Callable[[], bool] | None = None,
    ) -> None:
        self.db = db
        self.registration = registration
        self.interval_s = interval_s
        self.serving = serving
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._skipping = False

    def beat(self) -> None:
        r = self.registration
        with self.db.write() as session:
            registry.beat(
                session,
                name=r.name,
                host=r.host,
                engine=r.engine,
                queues=r.queues,
                devices=r.devices,
                pid=r.pid,
                now=utcnow(),
            )

    def start(self) -> Heartbeat:
        try:
            self.beat()
        except SQLAlchemyError:
            log.warning("worker heartbeat: database unavailable; retrying", exc_info=True)
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        log.info(
            "%s %s registered: queues %s, devices %s",
            "receiver" if self.registration.engine == RECEIVER else "worker",
            self.registration.name,
            ",".join(self.registration.queues) or "-",
            ",".join(self.registration.devices) or "-",
        )
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.serving is not None and not self._still_serving():
                continue
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - thread boundary: a missed beat is retried
                log.warning("worker heartbeat failed; retrying", exc_info=True)

    def _still_serving(self) -> bool:
        """``serving()``, with one log line when it turns False and one when it is True again."""
        assert self.serving is not None
        serving = self.serving()
        if serving == self._skipping:
            self._skipping = not serving
            name = self.registration.name
            if serving:
                log.info("%s serves again: heartbeat resumed", name)
            else:
                log.error("%s no longer serves: heartbeat withheld (health reports it)", name)
        return serving

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        try:
            with self.db.write() as session:
                registry.remove(session, self.registration.name)
        except SQLAlchemyError:  # the row goes stale instead
            log.warning("could not remove worker %s from the registry", self.registration.name)
