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
import os
import signal
import socket
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from types import FrameType
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError

from core.config import Settings
from node.db.engine import Database, open_database
from node.db.repositories.workers import RECEIVER
from node.dispatch.dispatcher import Dispatcher
from node.dispatch.outbox import DeliveryOutbox
from node.heartbeat import Heartbeat, Registration
from node.ingest.receiver_pool import PoolHandle, start_receiver_pool
from node.ingest.scp import ReceiverHandle, start_receiver
from node.jobs import queue
from node.jobs.outbox import Outbox
from node.leader import LeaderLock
from node.scheduler import build_scheduler
from pipelines.spec import PipelineConfig, load_pipeline_configs

log = logging.getLogger(__name__)

ALL_STAGES = ("receiver", "worker", "dispatcher", "scheduler")


class RunningWorker(Protocol):
    """The worker stage as the runtime drives it (``node.jobs.worker.Worker``)."""

    only_pipelines: Collection[str] | None  # a local worker consuming only some queues

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
        queues: tuple[str, ...] | None = None,
        devices: Sequence[str] = (),
    ) -> None:
        unknown = set(stages) - set(ALL_STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}")
        if "worker" in stages and build_worker is None and settings.jobs.engine != "celery":
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
        self._queues = queues
        self._devices = tuple(devices)
        self._heartbeat: Heartbeat | None = None
        self._receiver_heartbeat: Heartbeat | None = None

    def start(self) -> None:
        s = self.settings
        if "receiver" in self.stages:
            if s.receiver_processes > 1:
                self._receiver = start_receiver_pool(s)
            else:
                self._receiver = start_receiver(s, self.db)
            log.info("DICOM listener %s on %s:%s", s.ae_title, s.dicom_host, s.dicom_port)
        # a stop signal during start-up (handlers are installed before start) starts nothing more
        if "scheduler" in self.stages and not self.stop_event.is_set():
            self._spawn("scheduler-leader", self._lead_scheduler)
        if "worker" in self.stages and not self.stop_event.is_set():
            if s.jobs.engine == "celery":
                log.info("jobs.engine is celery: jobs run on `pacsnode worker` hosts, not here")
            elif self._build_worker is not None:
                worker = self._build_worker(s, self.db, self._worker_id)
                worker.only_pipelines = pipelines_of_queues(s, self._queues)
                self._worker = worker
                self._spawn("worker", worker.run)
        if "dispatcher" in self.stages and not self.stop_event.is_set():
            if s.jobs.engine == "celery":
                log.info(
                    "jobs.engine is celery: deliveries run on consumers of queue %r"
                    " (`pacsnode dispatcher`), not here",
                    s.dispatch.queue,
                )
            else:
                dispatcher = Dispatcher(s, self.db)
                self._spawn("dispatcher", dispatcher.run)
        self._register()

    def _register(self) -> None:
        """The worker registry row of this process, when it runs a local worker or dispatcher:
        the queues it serves (``*`` for a worker of every pipeline) and its devices. A receiver
        has a row of its own (engine ``receiver``), beaten only while it answers."""
        s = self.settings
        receiver = self._receiver
        if receiver is not None and not self.stop_event.is_set():
            name = f"{socket.gethostname()}:{os.getpid()}:{s.dicom_port}"
            self._receiver_heartbeat = Heartbeat(
                self.db,
                Registration(name, RECEIVER, ()),
                s.jobs.heartbeat_s,
                serving=lambda: receiver.answering,
            ).start()
        queues: list[str] = []
        if s.jobs.engine != "celery" and not self.stop_event.is_set():
            if self._worker is not None:  # a local worker runs pipelines, never deliveries
                queues += [q for q in self._queues or ("*",) if q != s.dispatch.queue]
            if "dispatcher" in self.stages:
                queues.append(s.dispatch.queue)
        if not queues:
            return
        name = self._worker_id or f"{socket.gethostname()}:{os.getpid()}"
        registration = Registration(name, "local", queues, self._devices if self._worker else ())
        self._heartbeat = Heartbeat(self.db, registration, s.jobs.heartbeat_s).start()

    def _lead_scheduler(self, stop: threading.Event) -> None:
        """Run the scheduler while this process holds the leader lock; stand by otherwise."""
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
        if self._scheduler is None:
            if lock.try_acquire():
                configs = load_pipeline_configs(self.settings.pipelines_dir)
                outbox, delivery_outbox = self._outboxes(configs)
                self._scheduler = build_scheduler(
                    self.settings,
                    self.db,
                    configs,
                    outbox=outbox,
                    delivery_outbox=delivery_outbox,
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

    def _outboxes(
        self, configs: Mapping[str, PipelineConfig]
    ) -> tuple[Outbox | None, DeliveryOutbox | None]:
        """With the Celery engine, the scheduler publishes committed jobs and due deliveries
        (else None). Celery is imported only then: the embedded default never loads it."""
        if self.settings.jobs.engine != "celery":
            return None, None
        from node.jobs.celery_engine import CeleryPublisher, make_celery

        publisher = CeleryPublisher(make_celery(self.settings))
        return (
            Outbox(self.db, publisher, queue_lookup(configs)),
            DeliveryOutbox(self.db, publisher, self.settings.dispatch.queue),
        )

    def _spawn(self, name: str, target: Callable[[threading.Event], None]) -> None:
        thread = threading.Thread(target=target, args=(self.stop_event,), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, grace_s: float = 30.0) -> None:
        self.stop_event.set()
        if self._receiver_heartbeat is not None:  # a clean stop is not a receiver gone silent
            self._receiver_heartbeat.stop()
        if self._receiver is not None:
            self._receiver.stop()
        for thread in self._threads:  # the scheduler's leader thread shuts the scheduler down
            thread.join(timeout=grace_s)
        if self._worker is not None and self._worker.current_job is not None:
            self._release_running_job(self._worker.current_job, self._worker.worker_id)
        if self._heartbeat is not None:
            self._heartbeat.stop()
        self.db.dispose()

    def _release_running_job(self, job_id: int, worker_id: str) -> None:
        with self.db.write() as session:
            job = queue.owned_job(session, job_id, worker_id)
            if job is not None:
                queue.release(session, job, worker_id, "shutdown")
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


def run_stages(
    settings: Settings,
    stages: tuple[str, ...],
    worker_id: str | None = None,
    build_worker: WorkerFactory | None = None,
    queues: tuple[str, ...] | None = None,
    devices: Sequence[str] = (),
) -> int:
    """Run ``stages`` in this process until SIGTERM/SIGINT, then stop them cleanly."""
    node = Node(
        settings,
        stages,
        worker_id=worker_id,
        build_worker=build_worker,
        queues=queues,
        devices=devices,
    )
    remember_signals(node.stop_event)  # before start: a SIGTERM during start-up counts
    try:
        node.start()
        while not node.stop_event.wait(0.5):
            pass
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
    """The polling dispatcher, or with the Celery engine a consumer of the delivery queue."""
    engine = getattr(args, "engine", None) or settings.jobs.engine
    if engine == "celery":
        from app.celery_worker import run_celery_worker  # Celery only for its engine

        return run_celery_worker(
            settings,
            (settings.dispatch.queue,),
            node_name=getattr(args, "node_name", None),
            concurrency=getattr(args, "concurrency", None) or 4,
        )
    return run_stages(settings, ("dispatcher",))


def run_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    return run_stages(settings, ("scheduler",))


def db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    open_database(settings).dispose()
    print(f"database at {settings.effective_database_url.split('@')[-1]} is up to date")
    return 0
