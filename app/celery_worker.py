"""``pacsnode worker --engine celery`` and ``pacsnode dispatcher --engine celery``: a Celery
worker that runs the node's jobs, its deliveries, or both, by the queues it consumes.

Wiring only: the node's own :class:`node.jobs.worker.Worker` (pipelines loaded once per process,
lease heartbeat, results and deliveries committed only while the lease holds) becomes the body of
the job task, and the node's :class:`node.dispatch.dispatcher.Dispatcher` the body of the delivery
task (queue ``dispatch.queue``); the broker decides who gets a message, the rows decide whether
it runs. A consumer of the delivery queue alone builds no job worker and loads no PyTorch. Every
such process keeps a row in the worker registry (``node.heartbeat``) while it runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from app.runtime import queue_lookup
from core.config import Settings
from node.db.engine import open_database
from node.dispatch.dispatcher import Dispatcher
from node.heartbeat import Heartbeat, Registration
from pipelines.spec import load_pipeline_configs

log = logging.getLogger(__name__)


def run_celery_worker(
    settings: Settings,
    queues: Sequence[str],
    node_name: str | None = None,
    concurrency: int = 1,
) -> int:
    from node.jobs.celery_engine import (
        CeleryPublisher,
        JobRunner,
        default_node_name,
        make_celery,
        register_delivery_task,
        register_task,
        worker_argv,
    )

    name = node_name or default_node_name()
    db = open_database(settings)
    app = make_celery(settings)
    job_queues = [q for q in queues if q != settings.dispatch.queue]
    devices: list[str] = []
    if job_queues:
        from app.worker import build_worker  # PyTorch: only a process that runs jobs loads it
        from models.devices import available_devices

        worker = build_worker(settings, db, worker_id=f"{name}:{os.getpid()}")
        queue_of = queue_lookup(load_pipeline_configs(settings.pipelines_dir))
        register_task(app, JobRunner(worker, CeleryPublisher(app), queue_of))
        devices = available_devices()
    if settings.dispatch.queue in queues:
        register_delivery_task(app, Dispatcher(settings, db, f"{name}:{os.getpid()}:dispatch"))
    heartbeat = Heartbeat(
        db, Registration(name, "celery", list(queues), devices), settings.jobs.heartbeat_s
    ).start()
    log.info("celery worker %s consuming %s from %s", name, ",".join(queues), _safe_url(settings))
    try:
        app.worker_main(worker_argv(name, queues, concurrency, loglevel=settings.log_level.upper()))
    finally:
        heartbeat.stop()
        db.dispose()
    return 0


def _safe_url(settings: Settings) -> str:
    """The broker URL without its password, for the log."""
    url = settings.jobs.broker_url
    return url.split("@", 1)[-1] if "@" in url else url
