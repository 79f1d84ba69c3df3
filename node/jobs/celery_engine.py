"""``jobs.engine: celery``: jobs executed by Celery workers consuming a broker (RabbitMQ or Redis).

A message carries a job id only. The worker claims that job under the same lease check the local
engine uses (``queue.claim_job``), so the database — not the broker — decides what runs: a
duplicate delivery finds the job running or finished and is dropped, and a worker presumed dead
cannot overwrite the outcome of the one that took over.

Delivery settings, chosen so a killed worker's job is never lost:

- ``task_acks_late`` — a message is acknowledged after the job ran, not when it arrived; a worker
  killed mid-job never acknowledges it, so the broker redelivers it when the connection drops.
- ``task_reject_on_worker_lost`` — the same when a pool child dies instead of the whole worker.
- ``worker_prefetch_multiplier = 1`` — a busy worker holds no second message that an idle worker
  could have run (jobs are long; fairness beats throughput of prefetching).
- broker heartbeats stay on (Celery's default, 120 s) and the pool is ``threads``, whose event
  loop keeps answering them while a job runs; a dead host's connection is closed by RabbitMQ.
- Redis as broker: ``visibility_timeout`` (set here to ``jobs.lease_s`` plus an hour) must exceed
  the longest job, or Redis redelivers a message still being worked on (harmless, just wasted).

Deliveries (``pacsnode dispatcher`` with this engine, or ``pacsnode worker --queues deliveries``)
ride the same app on their own queue (``dispatch.queue``): a message names a destination, and the
consumer claims that destination's due deliveries under the dispatcher's lease
(``Dispatcher.run_destination``); ``node.dispatch.outbox`` publishes them.

The redelivered message of a killed worker usually arrives while the dead worker's lease still
holds the job; it is dropped then, and the scheduler's lease expiry re-queues and re-publishes the
job. A retry after a failure is published with its backoff as the message's ETA.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from sqlalchemy import select

from core.config import Settings
from core.domain import JobState
from node.db.engine import Database
from node.db.orm import Job, utcnow
from node.dispatch.dispatcher import Dispatcher
from node.jobs import queue
from node.jobs.outbox import BrokerUnavailable, QueueDepth, QueueOf
from node.jobs.worker import Worker

log = logging.getLogger(__name__)

TASK_NAME = "pacsnode.run_job"
DELIVER_TASK_NAME = "pacsnode.deliver"
DEFAULT_QUEUE = "cpu"


def make_celery(settings: Settings) -> Celery:
    """The Celery app every process of one node shares (publisher and workers alike)."""
    app = Celery("pacsnode", broker=settings.jobs.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # the job row is the result
        task_default_queue=DEFAULT_QUEUE,
        task_create_missing_queues=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        broker_transport_options={"visibility_timeout": int(settings.jobs.lease_s) + 3600},
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


class CeleryPublisher:
    """Publishes job ids; the :class:`node.jobs.outbox.JobPublisher` of the Celery engine."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def publish(self, job_id: int, queue: str, eta: datetime | None = None) -> None:
        options: dict[str, Any] = {"queue": queue}
        if eta is not None and eta > datetime.now(UTC):
            options["eta"] = eta
        try:
            self.app.send_task(TASK_NAME, args=[job_id], **options)
        except (OperationalError, OSError) as exc:
            raise BrokerUnavailable(str(exc)) from exc

    def publish_destination(self, destination: str, queue: str, eta: datetime | None) -> None:
        """A delivery message: the destination whose due deliveries the consumer claims."""
        options: dict[str, Any] = {"queue": queue}
        if eta is not None and eta > datetime.now(UTC):
            options["eta"] = eta
        try:
            self.app.send_task(DELIVER_TASK_NAME, args=[destination], **options)
        except (OperationalError, OSError) as exc:
            raise BrokerUnavailable(str(exc)) from exc

    def queue_depths(self, queues: Collection[str]) -> dict[str, QueueDepth]:
        """Ready messages and consumers per queue (declared the way Celery declares it, so a
        queue nobody has used yet reads as empty instead of an error)."""
        out: dict[str, QueueDepth] = {}
        try:
            with self.app.connection_for_write() as conn:
                channel = conn.default_channel
                for name in queues:
                    _, messages, consumers = channel.queue_declare(
                        queue=name, durable=True, auto_delete=False
                    )
                    out[name] = QueueDepth(int(messages), int(consumers))
        except (OperationalError, OSError) as exc:
            raise BrokerUnavailable(str(exc)) from exc
        return out


class JobRunner:
    """The body of the Celery task: claim the named job, run it with the node's :class:`Worker`,
    and publish its retry (if the run failed and attempts remain) with the backoff as ETA."""

    def __init__(self, worker: Worker, publisher: CeleryPublisher, queue_of: QueueOf) -> None:
        self.worker = worker
        self.publisher = publisher
        self.queue_of = queue_of

    @property
    def db(self) -> Database:
        return self.worker.db

    def __call__(self, job_id: int) -> str:
        settings = self.worker.settings
        claimed = queue.claim_job(self.db, job_id, self.worker.worker_id, utcnow(), settings.jobs)
        if claimed is None:
            log.info("job %s: not queued or not due; message dropped", job_id)
            return "skipped"
        self.worker.process(claimed)
        with self.db.read() as session:
            row = session.execute(
                select(Job.state, Job.pipeline_name, Job.next_attempt_at).where(Job.id == job_id)
            ).one_or_none()
        if row is not None and row.state == JobState.QUEUED.value:
            due = row.next_attempt_at
            due = due if due.tzinfo else due.replace(tzinfo=UTC)
            try:
                self.publisher.publish(job_id, self.queue_of(row.pipeline_name), eta=due)
            except BrokerUnavailable as exc:
                log.warning("job %s: retry not published (%s); reconciliation will", job_id, exc)
            return "retry"
        return str(row.state) if row is not None else "gone"


def register_task(app: Celery, runner: JobRunner) -> None:
    """Bind the task name to ``runner`` in this (worker) process."""

    @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def run_job(job_id: int) -> str:
        return runner(int(job_id))


def register_delivery_task(app: Celery, dispatcher: Dispatcher) -> None:
    """Bind the delivery task to ``dispatcher`` in this (consumer) process. No Celery retries:
    a failed send is rescheduled by the dispatcher's backoff and published again by the outbox."""

    @app.task(name=DELIVER_TASK_NAME, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def deliver(destination: str) -> int:
        return dispatcher.run_destination(str(destination))


def worker_argv(
    node_name: str, queues: Sequence[str], concurrency: int = 1, loglevel: str = "INFO"
) -> list[str]:
    """``celery worker`` arguments: named node (``w1@hostA``), its queues, a thread pool whose
    event loop keeps broker heartbeats going while jobs run."""
    return [
        "worker",
        "-n",
        node_name,
        "-Q",
        ",".join(queues),
        "-P",
        "threads",
        "-c",
        str(concurrency),
        "-l",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]


def default_node_name() -> str:
    import socket

    return f"worker{os.getpid()}@{socket.gethostname()}"
