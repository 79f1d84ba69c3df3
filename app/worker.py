"""``pacsnode worker``, and the worker stage built: pipelines with their model registry, the result
producer and the delivery planner handed to :class:`node.jobs.worker.Worker`.

This is the one place that knows every piece the worker is made of. It lives apart from
:mod:`app.runtime` because it imports PyTorch (through the model registry and the pipelines):
only ``pacsnode worker`` and ``pacsnode serve`` import it, so the other processes start without.
"""

from __future__ import annotations

import argparse
import logging
from functools import partial

from app.runtime import run_stages
from core.config import Settings
from models.devices import available_devices
from models.registry import ModelRegistry, ModelStatus
from node.db.engine import Database
from node.db.repositories import model_status
from node.dispatch.delivery_plan import plan_deliveries
from node.jobs.worker import Worker, default_worker_id
from node.results.produce import produce_results
from pipelines.allocator import keep_freed_memory
from pipelines.pipeline import warm_up_kernels
from pipelines.registry import PipelineRegistry

log = logging.getLogger(__name__)


def build_worker(settings: Settings, db: Database, worker_id: str | None = None) -> Worker:
    """A worker over every configured pipeline, sharing one warm model registry.

    Before it serves, every card's weights are checked and every pipeline's members looked up:
    one warning per broken card or pipeline, the statuses stored for the console; the worker then
    serves the good ones (a job of a broken pipeline fails with the reason)."""
    worker_id = worker_id or default_worker_id()
    if keep_freed_memory(settings.worker_malloc_keep_mb):
        log.info(
            "malloc keeps up to %d MB of freed memory for reuse (worker_malloc_keep_mb)",
            settings.worker_malloc_keep_mb,
        )
    store = model_status.recorder(db, worker_id)

    def on_status(status: ModelStatus) -> None:
        store(status.name, status.state.value, status.device, status.error)

    models = ModelRegistry(settings.models_dir, settings.torch_threads, on_status=on_status)
    pipelines = PipelineRegistry(settings, models)
    statuses = models.check()
    problems = pipelines.check({name: s.error for name, s in statuses.items()})
    usable = sum(1 for s in statuses.values() if not s.error)
    log.info(
        "models: %d of %d usable; pipelines: %d of %d can run",
        usable,
        len(statuses),
        len(pipelines.names()) - len(problems),
        len(pipelines.names()),
    )
    log.info("post-processing kernels ready in %.1f s", warm_up_kernels())
    return Worker(
        settings,
        db,
        pipelines,
        producer=produce_results,
        # The review gate's held/pending choice comes per job; the node's settings decide
        # whether an Orthanc source also gets the results back.
        delivery_planner=partial(plan_deliveries, settings=settings),
        worker_id=worker_id,
    )


def run_worker(settings: Settings, args: argparse.Namespace) -> int:
    """A worker of the configured engine (``--engine`` overrides ``jobs.engine``)."""
    queues = _queues_arg(getattr(args, "queues", None))
    engine = getattr(args, "engine", None) or settings.jobs.engine
    if engine == "celery":
        from app.celery_worker import run_celery_worker  # Celery only for its engine

        return run_celery_worker(
            settings,
            queues or ("cpu",),
            node_name=getattr(args, "node_name", None),
            concurrency=getattr(args, "concurrency", 1),
        )
    return run_stages(
        settings,
        ("worker",),
        worker_id=getattr(args, "worker_id", None),
        build_worker=build_worker,
        queues=queues,
        devices=available_devices(),
    )


def _queues_arg(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    return tuple(q.strip() for q in value.split(",") if q.strip())
