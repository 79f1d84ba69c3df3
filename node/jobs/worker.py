"""The worker: claim a job, run its pipeline, produce validated DICOM results, plan deliveries.

Inference runs outside any database transaction; a heartbeat thread renews the job's lease
meanwhile, so a long CT volume is not mistaken for a dead worker. The job's outcome, its artifact
rows and its deliveries commit in one transaction, and only if this worker still owns the lease.
A failure is caught here, at the job boundary, and recorded on the job (with its traceback in the
job log) — one bad study never stops the worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Protocol, runtime_checkable

import pydicom
from pydicom import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import Settings
from node.db import notify
from node.db.engine import Database
from node.db.orm import Artifact, Job, utcnow
from node.db.repositories import studies
from node.jobs import queue
from node.jobs.study_input import build_study_input
from node.overrides import OverrideValues, pipeline_overrides
from node.results.produce import OutputOptions, ProducedResults, ResultValidationError
from node.results.store import save_result
from pipelines.contract import PipelineResult, StudyInput
from pipelines.errors import PipelineInputError
from pipelines.spec import PipelineConfig

log = logging.getLogger(__name__)


class RunnablePipeline(Protocol):
    """What the worker needs of a pipeline (``pipelines.pipeline.Pipeline``)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def config(self) -> PipelineConfig | None:
        """Its definition, read for the outputs to produce; ``None``: the default outputs."""
        ...

    def run(self, study: StudyInput) -> PipelineResult: ...


class PipelineSource(Protocol):
    """The pipelines by name (``pipelines.registry.PipelineRegistry``)."""

    def get(self, name: str) -> RunnablePipeline: ...


@runtime_checkable
class OverridablePipelines(PipelineSource, Protocol):
    """A pipeline source that takes the console's edits (devices, weights, thresholds)."""

    def apply_overrides(self, name: str, overrides: OverrideValues) -> PipelineConfig: ...


class ResultProducer(Protocol):
    """Turns a pipeline result into validated DICOM files in ``out_dir``
    (``node.results.produce.produce_results``); raises ResultValidationError, writes nothing,
    when an object does not validate."""

    def __call__(
        self,
        result: PipelineResult,
        sources: Sequence[Dataset],
        options: OutputOptions,
        out_dir: Path,
    ) -> ProducedResults: ...


class DeliveryPlanner(Protocol):
    """Plans the deliveries of a succeeded job's artifacts inside the job's final transaction
    (``node.dispatch.delivery_plan.plan_deliveries`` with the node's settings bound); the worker does
    not read what it returns."""

    def __call__(
        self, session: Session, job: Job, destinations: Sequence[str], *, held: bool
    ) -> object: ...


class NonRetryableError(Exception):
    """Raised (or mapped) for failures a retry cannot fix: wrong input, invalid output."""


# Failures a retry cannot fix: the job fails at once instead of being requeued.
NON_RETRYABLE: tuple[type[Exception], ...] = (
    NonRetryableError,
    PipelineInputError,
    ResultValidationError,
)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 10000}"


def output_options(
    config: PipelineConfig | None, result_version: int, zone: tzinfo = UTC
) -> OutputOptions:
    """The objects to produce, as the pipeline's definition asks (defaults without one), dated
    in the node's time zone."""
    if config is None:
        return OutputOptions(result_version=result_version, zone=zone)
    outputs = config.outputs
    return OutputOptions(
        seg_type=outputs.seg_type,
        seg_segments=outputs.seg_segments,
        omit_empty_frames=outputs.omit_empty_frames,
        overlay=outputs.overlay,
        skip_empty_overlay=outputs.skip_empty_overlay,
        pdf=outputs.pdf,
        sr=outputs.sr,
        result_version=result_version,
        zone=zone,
    )


class _LeaseKeeper:
    """Renews a job's lease every third of its length until stopped."""

    def __init__(self, db: Database, settings: Settings, job_id: int, worker_id: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(db, settings, job_id, worker_id),
            daemon=True,
            name=f"lease-{job_id}",
        )
        self.lost = False

    def _run(self, db: Database, settings: Settings, job_id: int, worker_id: str) -> None:
        interval = max(settings.jobs.lease_s / 3, 0.5)
        while not self._stop.wait(interval):
            if not queue.renew_lease(db, job_id, worker_id, utcnow(), settings.jobs):
                self.lost = True
                return

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Worker:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        pipelines: PipelineSource,
        producer: ResultProducer,
        delivery_planner: DeliveryPlanner,
        *,
        worker_id: str | None = None,
        only_pipelines: Collection[str] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.pipelines = pipelines
        self.worker_id = worker_id or default_worker_id()
        self.only_pipelines = only_pipelines
        self._producer = producer
        self._planner = delivery_planner
        self.current_job: int | None = None
        self._applied_overrides: dict[str, OverrideValues] = {}

    # -- loop -----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Work while jobs are due; otherwise sleep until a committed job wakes this worker
        (``node.db.notify``), the next retry is due, or the safety poll comes round."""
        log.info("worker %s started", self.worker_id)
        cfg = self.settings.jobs
        waker = self.db.wakeups.subscribe(notify.JOBS)
        try:
            while not stop.is_set():
                try:
                    due_in = self.step()
                except Exception:  # noqa: BLE001 - process boundary: log, back off, keep serving
                    log.exception("worker %s: unexpected error outside a job", self.worker_id)
                    due_in = cfg.poll_interval_s
                if due_in is None or due_in > 0:
                    waker.wait(
                        stop,
                        due_in_s=due_in,
                        poll_s=cfg.poll_interval_s,
                        safety_s=cfg.safety_poll_s,
                    )
        finally:
            waker.close()
        log.info("worker %s stopped", self.worker_id)

    def step(self) -> float | None:
        """Run one due job if there is one: 0 after a job (look again at once); else seconds
        until the next queued job is due, None when none is queued."""
        with self.db.read() as session:
            due = queue.next_due_at(session, self.only_pipelines)
        if due is None:
            return None
        wait_s = (due - utcnow()).total_seconds()
        if wait_s > 0:
            return wait_s
        if self.run_once():
            return 0.0
        return None  # due but locked by another worker: its outcome wakes us if needed

    def run_once(self) -> bool:
        claimed = queue.claim_next(
            self.db, self.worker_id, utcnow(), self.settings.jobs, self.only_pipelines
        )
        if claimed is None:
            return False
        self.process(claimed)
        return True

    # -- one job --------------------------------------------------------------------------
    def process(self, claimed: queue.ClaimedJob) -> None:
        self.current_job = claimed.job_id
        lines: list[str] = [f"{utcnow().isoformat()} attempt {claimed.attempt} by {self.worker_id}"]
        started = time.perf_counter()
        try:
            with _LeaseKeeper(self.db, self.settings, claimed.job_id, self.worker_id) as keeper:
                produced, result = self._compute(claimed, lines)
            if keeper.lost:
                log.warning("job %s: lease lost while running; outcome discarded", claimed.job_id)
                return
            lines.append(f"done in {time.perf_counter() - started:.2f} s")
            self._finish(claimed, produced, result, "\n".join(lines))
        except Exception as exc:  # noqa: BLE001 - job boundary: every failure is recorded on the job
            retryable = not isinstance(exc, NON_RETRYABLE)
            lines.append(traceback.format_exc())
            log.warning("job %s failed (%s): %s", claimed.job_id, type(exc).__name__, exc)
            with self.db.write() as session:
                job = queue.owned_job(session, claimed.job_id, self.worker_id)
                if job is not None:
                    queue.mark_failed(
                        session,
                        job,
                        self.worker_id,
                        utcnow(),
                        f"{type(exc).__name__}: {exc}",
                        self.settings.jobs,
                        log="\n".join(lines),
                        retryable=retryable,
                    )
        finally:
            self.current_job = None

    def _compute(
        self, claimed: queue.ClaimedJob, lines: list[str]
    ) -> tuple[ProducedResults, PipelineResult]:
        with self.db.read() as session:
            study_input = build_study_input(session, self.settings, claimed.study_uid)
            job_created = session.get(Job, claimed.job_id).created_at  # type: ignore[union-attr]
            instances = {
                inst.sop_instance_uid: self.settings.data_dir / inst.path
                for insts in studies.series_instances(session, claimed.study_uid).values()
                for inst in insts
            }
        lines.append(
            f"input: {len(study_input.series)} series, {sum(len(s.files) for s in study_input.series)} files"
        )
        self._apply_console_overrides(claimed.pipeline_name)
        pipeline = self.pipelines.get(claimed.pipeline_name)
        t0 = time.perf_counter()
        # The job's creation time, not "now": a retry rebuilds byte-identical objects.
        created = job_created if job_created.tzinfo else job_created.replace(tzinfo=UTC)
        result = replace(pipeline.run(study_input), created_at=created.isoformat())
        lines.append(
            f"pipeline {pipeline.name} v{pipeline.version}: {time.perf_counter() - t0:.2f} s"
        )
        for run in result.model_runs:
            lines.append(
                f"  model {run.model_name} v{run.model_version} on {run.device_used}"
                f" (asked {run.device_requested}) {run.seconds:.2f} s"
                + (f" WARNING {run.fallback_warning}" if run.fallback_warning else "")
            )
        for warning in result.warnings:
            lines.append(f"  warning: {warning}")
        sources = self._load_sources(result, instances)
        out_dir = self.settings.job_results_dir(claimed.job_id)  # a key, never a peer's UID
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        save_result(result, out_dir)
        lines.append(f"result saved for review in {time.perf_counter() - t0:.2f} s")
        t0 = time.perf_counter()
        produced = self._producer(
            result,
            sources,
            output_options(pipeline.config, claimed.result_version, self.settings.zone),
            out_dir,
        )
        lines.append(
            f"results: {', '.join(str(p.kind) for p in produced)}"
            f" in {time.perf_counter() - t0:.2f} s"
        )
        lines += [f"  warning: {w}" for w in produced.warnings]
        lines += [f"  note: {n}" for n in produced.notes]
        return produced, result

    def _apply_console_overrides(self, name: str) -> None:
        """Devices, weights and thresholds an admin set in the console, applied before the run
        (the registry rebuilds the pipeline only when its effective config changed)."""
        if not isinstance(self.pipelines, OverridablePipelines):
            return
        wanted = pipeline_overrides(self.db).get(name, {})
        if wanted != self._applied_overrides.get(name, {}):
            self.pipelines.apply_overrides(name, wanted)
            self._applied_overrides[name] = wanted
            log.info("pipeline %s: console overrides applied: %s", name, wanted or "none")

    @staticmethod
    def _load_sources(result: PipelineResult, instances: dict[str, Path]) -> list[Dataset]:
        uids = list(dict.fromkeys(f.sop_instance_uid for f in result.source_frames))
        missing = [u for u in uids if u not in instances]
        if missing:
            raise NonRetryableError(f"result refers to {len(missing)} unknown source instance(s)")
        return [pydicom.dcmread(instances[u]) for u in uids]

    def _finish(
        self,
        claimed: queue.ClaimedJob,
        produced: ProducedResults,
        result: PipelineResult,
        job_log: str,
    ) -> None:
        with self.db.write() as session:
            job = queue.owned_job(session, claimed.job_id, self.worker_id)
            if job is None:
                log.warning("job %s: no longer ours at finish; outcome discarded", claimed.job_id)
                return
            for obj in produced:
                existing = session.scalar(
                    select(Artifact).where(Artifact.sop_instance_uid == obj.sop_instance_uid)
                )
                rel = str(Path(obj.path).resolve().relative_to(self.settings.data_dir.resolve()))
                if existing is None:
                    session.add(
                        Artifact(
                            job_pk=job.id,
                            kind=obj.kind.value,
                            sop_class_uid=obj.sop_class_uid,
                            sop_instance_uid=obj.sop_instance_uid,
                            series_instance_uid=obj.series_instance_uid,
                            path=rel,
                            size_bytes=obj.size_bytes,
                            validated=True,
                        )
                    )
                else:
                    existing.path, existing.size_bytes = rel, obj.size_bytes
            session.flush()
            session.refresh(job, attribute_names=["artifacts"])
            self._planner(session, job, claimed.destinations, held=claimed.review_required)
            summary = result.summary()
            if produced.warnings:  # optional outputs left out: succeeded with warnings
                summary["output_warnings"] = list(produced.warnings)
            if produced.notes:  # left out by design (an empty overlay)
                summary["output_notes"] = list(produced.notes)
            queue.mark_succeeded(session, job, self.worker_id, utcnow(), summary, job_log)
