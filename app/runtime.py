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
from collections.abc import Callable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from core.config import Settings
from node.db.engine import Database, open_database
from pipelines.spec import PipelineConfig, load_pipeline_configs

if TYPE_CHECKING:
    import uvicorn

    from node.leader import LeaderLock

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
        queues: tuple[str, ...] | None = None,
    ) -> None:
        unknown = set(stages) - set(ALL_STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}")
        self.settings = settings
        self.stages = stages
        self.db = db or open_database(settings)
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._receiver: Any = None
        self._scheduler: Any = None
        self._worker: Any = None
        self._worker_id = worker_id
        self._queues = queues

    def start(self) -> None:
        """Start the stages one after the other; a stop signal received meanwhile (the handlers
        are installed before this is called) ends the start-up between two stages."""
        s = self.settings
        if "receiver" in self.stages and not self.stop_event.is_set():
            if s.receiver_processes > 1:
                from node.ingest.receiver_pool import start_receiver_pool

                self._receiver = start_receiver_pool(s)
            else:
                from node.ingest.scp import start_receiver

                self._receiver = start_receiver(s, self.db)
                self._spawn("allowlist", self._follow_allowlist)
            log.info("DICOM listener %s on %s:%s", s.ae_title, s.dicom_host, s.dicom_port)
        if "scheduler" in self.stages and not self.stop_event.is_set():
            self._spawn("scheduler-leader", self._lead_scheduler)
        if "worker" in self.stages and not self.stop_event.is_set():
            if s.jobs.engine == "celery":
                log.info("jobs.engine is celery: jobs run on `pacsnode worker` hosts, not here")
            else:
                from node.jobs.worker import Worker
                from pipelines.registry import PipelineRegistry

                self._worker = Worker(
                    s,
                    self.db,
                    PipelineRegistry(s),
                    worker_id=self._worker_id,
                    only_pipelines=pipelines_of_queues(s, self._queues),
                )
                self._spawn("worker", self._worker.run)
        if "dispatcher" in self.stages and not self.stop_event.is_set():
            from node.dispatch.dispatcher import Dispatcher

            dispatcher = Dispatcher(s, self.db)
            self._spawn("dispatcher", dispatcher.run)

    def _lead_scheduler(self, stop: threading.Event) -> None:
        """Run the scheduler while this process holds the leader lock; stand by otherwise."""
        from node.leader import LeaderLock

        lock = LeaderLock(self.db)
        standby_logged = False
        try:
            while not stop.is_set():
                try:
                    standby_logged = self._lead_once(lock, standby_logged)
                except SQLAlchemyError:  # database unreachable: stand by, try again
                    log.warning("scheduler: database unavailable; retrying", exc_info=True)
                except Exception:  # noqa: BLE001 - thread boundary: stop the process, loudly
                    log.exception("scheduler failed; stopping this process")
                    stop.set()
                stop.wait(1.0)
        finally:
            if self._scheduler is not None:
                self._scheduler.shutdown(wait=True)
                self._scheduler = None
            lock.release()

    def _lead_once(self, lock: LeaderLock, standby_logged: bool) -> bool:
        """One step of leadership: take the lock and start, or notice it lost and stop."""
        from node.scheduler import build_scheduler

        if self._scheduler is None:
            if lock.try_acquire():
                configs = load_pipeline_configs(self.settings.pipelines_dir)
                self._scheduler = build_scheduler(
                    self.settings, self.db, configs, outbox=self._outbox(configs)
                )
                self._scheduler.start()
                log.info("scheduler: active (leader lock held)")
            elif not standby_logged:
                log.info("scheduler: standby (another scheduler holds the leader lock)")
                return True
        elif not lock.still_held():
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
            return False
        return standby_logged

    def _outbox(self, configs: Mapping[str, PipelineConfig]) -> Any:
        """With the Celery engine, the scheduler publishes committed jobs (else None)."""
        if self.settings.jobs.engine != "celery":
            return None
        from node.jobs.celery_engine import CeleryPublisher, make_celery
        from node.jobs.outbox import Outbox

        publisher = CeleryPublisher(make_celery(self.settings))
        return Outbox(self.db, publisher, queue_lookup(configs))

    def _follow_allowlist(self, stop: threading.Event) -> None:
        """Apply the AE allowlist an admin edits in the console to new associations."""
        from node.overrides import REFRESH_S, settings_refresher

        current = settings_refresher(self.settings, self.db)
        while not stop.wait(REFRESH_S):
            try:
                self._receiver.server.allowed_callers = list(current.get().allowed_callers)
            except Exception:  # noqa: BLE001 - keep the listener on its last allowlist
                log.warning("could not refresh the AE allowlist", exc_info=True)

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, args=(self.stop_event,), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, grace_s: float = 30.0) -> None:
        self.stop_event.set()
        if self._receiver is not None:
            self._receiver.stop()
        for thread in self._threads:
            thread.join(timeout=grace_s)
        if self._worker is not None and self._worker.current_job is not None:
            self._release_running_job(self._worker.current_job)
        self.db.dispose()

    def _release_running_job(self, job_id: int) -> None:
        from node.jobs import queue

        with self.db.write() as session:
            job = queue.owned_job(session, job_id, self._worker.worker_id)
            if job is not None:
                queue.release(session, job, self._worker.worker_id, "shutdown")
        log.info("job %s released for another worker", job_id)


def pipelines_of_queues(settings: Settings, queues: tuple[str, ...] | None) -> list[str] | None:
    """The pipelines routed to ``queues`` (None: every pipeline) for a local-engine worker."""
    if queues is None:
        return None
    configs = load_pipeline_configs(settings.pipelines_dir)
    return [name for name, cfg in configs.items() if cfg.queue in queues]


def queue_lookup(configs: Mapping[str, PipelineConfig]) -> Callable[[str], str]:
    """Pipeline name -> its queue; a job of a pipeline no longer defined goes to ``cpu``."""
    queues = {name: cfg.queue for name, cfg in configs.items()}
    return lambda name: queues.get(name, "cpu")


def _run_stages(
    settings: Settings,
    stages: tuple[str, ...],
    worker_id: str | None = None,
    queues: tuple[str, ...] | None = None,
) -> int:
    node = Node(settings, stages, worker_id=worker_id, queues=queues)
    _remember_signals(node.stop_event)  # before start: a SIGTERM during start-up counts
    try:
        node.start()
        while not node.stop_event.wait(0.5):
            pass
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


def web_server_config(settings: Settings, db: Database) -> uvicorn.Config:
    """How the console is served: uvicorn over ``create_app``, with its own proxy-header handling
    off. The app honours X-Forwarded-For itself, and only from ``web.trusted_proxies``; uvicorn's
    would trust 127.0.0.1 (or $FORWARDED_ALLOW_IPS) whatever the settings say."""
    import uvicorn

    from web.main import create_app

    return uvicorn.Config(
        create_app(settings, db),
        host=settings.web_host,
        port=settings.web_port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
    )


def _serve_web(settings: Settings, db: Database, stop: threading.Event | None = None) -> None:
    """Serve the console until uvicorn's own SIGTERM/SIGINT handling or ``stop`` ends it."""
    import uvicorn

    server = uvicorn.Server(web_server_config(settings, db))
    if stop is not None:

        def follow_stop() -> None:
            stop.wait()
            server.should_exit = True

        threading.Thread(target=follow_stop, name="web-stop", daemon=True).start()
    server.run()


def serve(settings: Settings, args: argparse.Namespace) -> int:
    """Every stage in one process: what ``make run`` starts."""
    node = Node(settings, ALL_STAGES)
    _remember_signals(node.stop_event)
    try:
        node.start()
        if node.stop_event.is_set():
            log.info("stopped while starting; the web console is not started")
            return 0
        log.info("web console on http://%s:%s", settings.web_host, settings.web_port)
        _serve_web(settings, node.db, node.stop_event)
    finally:
        node.stop()
    return 0


def run_receiver(settings: Settings, args: argparse.Namespace) -> int:
    return _run_stages(settings, ("receiver",))


def run_worker(settings: Settings, args: argparse.Namespace) -> int:
    """A worker of the configured engine (``--engine`` overrides ``jobs.engine``)."""
    queues = _queues_arg(getattr(args, "queues", None))
    engine = getattr(args, "engine", None) or settings.jobs.engine
    if engine == "celery":
        from app.celery_worker import run_celery_worker

        return run_celery_worker(
            settings,
            queues or ("cpu",),
            node_name=getattr(args, "node_name", None),
            concurrency=getattr(args, "concurrency", 1),
        )
    return _run_stages(
        settings, ("worker",), worker_id=getattr(args, "worker_id", None), queues=queues
    )


def _queues_arg(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    return tuple(q.strip() for q in value.split(",") if q.strip())


def run_dispatcher(settings: Settings, args: argparse.Namespace) -> int:
    return _run_stages(settings, ("dispatcher",))


def run_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    return _run_stages(settings, ("scheduler",))


def run_web(settings: Settings, args: argparse.Namespace) -> int:
    stop = threading.Event()
    _remember_signals(stop)
    _serve_web(settings, open_database(settings), stop)
    return 0


def db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    open_database(settings).dispose()
    print(f"database at {settings.effective_database_url.split('@')[-1]} is up to date")
    return 0
