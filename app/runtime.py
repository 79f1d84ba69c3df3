"""Process wiring: run the stages together (``pacsnode serve``) or one per process.

Like mercure, one codebase has several entry points — receiver, worker, dispatcher, scheduler,
web — that share nothing but the database and the data directory, so they can run in one process
(the embedded default) or as separate processes against PostgreSQL. SIGTERM/SIGINT stop cleanly:
the DICOM listener stops accepting and lets running associations finish, workers finish or
release their job (the lease makes it resumable either way), the scheduler shuts down.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler

from core.config import Settings
from node.db.engine import Database, open_database
from node.dispatch.dispatcher import Dispatcher
from node.ingest.receiver_pool import PoolHandle, start_receiver_pool
from node.ingest.scp import ReceiverHandle, start_receiver
from node.jobs import queue
from node.jobs.worker import Worker
from node.overrides import REFRESH_S, settings_refresher
from node.scheduler import build_scheduler
from pipelines.spec import load_pipeline_configs
from web.main import create_app

log = logging.getLogger(__name__)

ALL_STAGES = ("receiver", "worker", "dispatcher", "scheduler")


class Node:
    """The headless stages of one process; ``start`` spawns them, ``stop`` ends them cleanly."""

    def __init__(
        self,
        settings: Settings,
        stages: tuple[str, ...],
        db: Database | None = None,
        worker_id: str | None = None,
    ) -> None:
        unknown = set(stages) - set(ALL_STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}")
        self.settings = settings
        self.stages = stages
        self.db = db or open_database(settings)
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._receiver: PoolHandle | ReceiverHandle | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._worker: Worker | None = None
        self._worker_id = worker_id

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
        if "worker" in self.stages:
            # The one lazy import of the wiring: the worker's pipelines and model registry load
            # PyTorch, which a receiver, dispatcher or scheduler process must not pay for.
            from app.worker import build_worker

            self._worker = build_worker(s, self.db, self._worker_id)
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
    _remember_signals(stop)
    while not stop.wait(0.5):
        pass


def _run_stages(settings: Settings, stages: tuple[str, ...], worker_id: str | None = None) -> int:
    node = Node(settings, stages, worker_id=worker_id)
    node.start()
    try:
        _wait_for_signal(node.stop_event)
    finally:
        node.stop()
    return 0


def _remember_signals(stop: threading.Event) -> None:
    """Handlers that only set ``stop``. Uvicorn captures SIGTERM/SIGINT while it serves and
    re-raises them on exit; with the default handler still installed that re-raise would kill
    the process before the other stages are stopped cleanly."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _serve_web(settings: Settings, db: Database) -> None:
    config = uvicorn.Config(
        create_app(settings, db),
        host=settings.web_host,
        port=settings.web_port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
    )
    uvicorn.Server(config).run()  # returns on SIGTERM/SIGINT (uvicorn's own handlers)


def serve(settings: Settings, args: argparse.Namespace) -> int:
    """Every stage in one process: what ``make run`` starts."""
    node = Node(settings, ALL_STAGES)
    _remember_signals(node.stop_event)
    node.start()
    log.info("web console on http://%s:%s", settings.web_host, settings.web_port)
    try:
        _serve_web(settings, node.db)
    finally:
        node.stop()
    return 0


def run_receiver(settings: Settings, args: argparse.Namespace) -> int:
    return _run_stages(settings, ("receiver",))


def run_worker(settings: Settings, args: argparse.Namespace) -> int:
    return _run_stages(settings, ("worker",), worker_id=getattr(args, "worker_id", None))


def run_dispatcher(settings: Settings, args: argparse.Namespace) -> int:
    return _run_stages(settings, ("dispatcher",))


def run_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    return _run_stages(settings, ("scheduler",))


def run_web(settings: Settings, args: argparse.Namespace) -> int:
    _remember_signals(threading.Event())
    _serve_web(settings, open_database(settings))
    return 0


def db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    open_database(settings).dispose()
    print(f"database at {settings.effective_database_url.split('@')[-1]} is up to date")
    return 0
