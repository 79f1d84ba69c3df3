"""Process wiring: run the stages together (``pacsnode serve``) or one per process.

Like mercure, one codebase has several entry points — receiver, worker, dispatcher, scheduler,
web — that share nothing but the database and the data directory, so they can run in one process
(the embedded default) or as separate processes against PostgreSQL. SIGTERM/SIGINT stop cleanly:
the DICOM listener stops accepting and lets running associations finish, workers finish or
release their job (the lease makes it resumable either way), the scheduler shuts down.

This module runs the headless stages and imports neither PyTorch nor the web console: the worker
is built by ``app.worker`` and handed in as a factory, the console is served by ``app.console``,
and the command line imports each command's module only when it runs, so ``pacsnode receiver``,
``dispatcher`` and ``scheduler`` start without either.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler

from core.config import Settings
from node.db.engine import Database, open_database
from node.dispatch.dispatcher import Dispatcher
from node.ingest.receiver_pool import PoolHandle, start_receiver_pool
from node.ingest.scp import ReceiverHandle, start_receiver
from node.jobs import queue
from node.overrides import REFRESH_S, settings_refresher
from node.scheduler import build_scheduler
from pipelines.spec import load_pipeline_configs

log = logging.getLogger(__name__)

ALL_STAGES = ("receiver", "worker", "dispatcher", "scheduler")


class RunningWorker(Protocol):
    """The worker stage as the runtime drives it (``node.jobs.worker.Worker``)."""

    @property
    def worker_id(self) -> str: ...

    @property
    def current_job(self) -> int | None: ...

    def run(self, stop: threading.Event) -> None: ...


class WorkerFactory(Protocol):
    """Builds the worker stage (``app.worker.build_worker``)."""

    def __call__(
        self, settings: Settings, db: Database, worker_id: str | None = None
    ) -> RunningWorker: ...


class Node:
    """The headless stages of one process; ``start`` spawns them, ``stop`` ends them cleanly."""

    def __init__(
        self,
        settings: Settings,
        stages: tuple[str, ...],
        db: Database | None = None,
        worker_id: str | None = None,
        build_worker: WorkerFactory | None = None,
    ) -> None:
        unknown = set(stages) - set(ALL_STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}")
        if "worker" in stages and build_worker is None:
            raise ValueError("the worker stage needs build_worker (app.worker.build_worker)")
        self.settings = settings
        self.stages = stages
        self.db = db or open_database(settings)
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._receiver: PoolHandle | ReceiverHandle | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._worker: RunningWorker | None = None
        self._worker_id = worker_id
        self._build_worker = build_worker

    def start(self) -> None:
        s = self.settings
        if "receiver" in self.stages:
            if s.receiver_processes > 1:
                self._receiver = start_receiver_pool(s)
            else:
                receiver = start_receiver(s, self.db)
                self._receiver = receiver
                self._spawn("allowlist", lambda stop: self._follow_allowlist(receiver, stop))
            log.info("DICOM listener %s on %s:%s", s.ae_title, s.dicom_host, s.dicom_port)
        if "scheduler" in self.stages:
            self._scheduler = build_scheduler(s, self.db, load_pipeline_configs(s.pipelines_dir))
            self._scheduler.start()
        if "worker" in self.stages and self._build_worker is not None:
            self._worker = self._build_worker(s, self.db, self._worker_id)
            self._spawn("worker", self._worker.run)
        if "dispatcher" in self.stages:
            dispatcher = Dispatcher(s, self.db)
            self._spawn("dispatcher", dispatcher.run)

    def _follow_allowlist(self, receiver: ReceiverHandle, stop: threading.Event) -> None:
        """Apply the AE allowlist an admin edits in the console to new associations."""
        current = settings_refresher(self.settings, self.db)
        while not stop.wait(REFRESH_S):
            try:
                receiver.server.allowed_callers = list(current.get().allowed_callers)
            except Exception:  # noqa: BLE001 - keep the listener on its last allowlist
                log.warning("could not refresh the AE allowlist", exc_info=True)

    def _spawn(self, name: str, target: Callable[[threading.Event], None]) -> None:
        thread = threading.Thread(target=target, args=(self.stop_event,), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, grace_s: float = 30.0) -> None:
        self.stop_event.set()
        if self._receiver is not None:
            self._receiver.stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
        for thread in self._threads:
            thread.join(timeout=grace_s)
        if self._worker is not None and self._worker.current_job is not None:
            self._release_running_job(self._worker.current_job, self._worker.worker_id)
        self.db.dispose()

    def _release_running_job(self, job_id: int, worker_id: str) -> None:
        with self.db.write() as session:
            job = queue.owned_job(session, job_id, worker_id)
            if job is not None:
                queue.release(session, job, worker_id, "shutdown")
        log.info("job %s released for another worker", job_id)


def _wait_for_signal(stop: threading.Event) -> None:
    remember_signals(stop)
    while not stop.wait(0.5):
        pass


def run_stages(
    settings: Settings,
    stages: tuple[str, ...],
    worker_id: str | None = None,
    build_worker: WorkerFactory | None = None,
) -> int:
    """Run ``stages`` in this process until SIGTERM/SIGINT, then stop them cleanly."""
    node = Node(settings, stages, worker_id=worker_id, build_worker=build_worker)
    node.start()
    try:
        _wait_for_signal(node.stop_event)
    finally:
        node.stop()
    return 0


def remember_signals(stop: threading.Event) -> None:
    """Handlers that only set ``stop``. Uvicorn captures SIGTERM/SIGINT while it serves and
    re-raises them on exit; with the default handler still installed that re-raise would kill
    the process before the other stages are stopped cleanly."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_receiver(settings: Settings, args: argparse.Namespace) -> int:
    return run_stages(settings, ("receiver",))


def run_dispatcher(settings: Settings, args: argparse.Namespace) -> int:
    return run_stages(settings, ("dispatcher",))


def run_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    return run_stages(settings, ("scheduler",))


def db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    open_database(settings).dispose()
    print(f"database at {settings.effective_database_url.split('@')[-1]} is up to date")
    return 0
