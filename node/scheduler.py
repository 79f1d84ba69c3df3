"""The one APScheduler instance: completion sweep, lease expiry, retention, Orthanc polling,
and — with ``jobs.engine: celery`` — publishing jobs after commit, outbox reconciliation and the
delivery outbox (due deliveries published per destination, with their backoff as ETA).

Each periodic job is a plain function of (settings, db, now) defined next to its domain; this
module only wires them to intervals. Jobs never overlap themselves (``max_instances=1``) and an
exception in one run is logged and the next run happens as planned.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import func, select

from core.config import Settings
from core.domain import DeliveryState, StudyState
from node.db import notify
from node.db.engine import Database
from node.db.orm import Artifact, Delivery, Job, Study, utcnow
from node.db.repositories import audit
from node.dispatch.outbox import DeliveryOutbox
from node.grouping import completion
from node.ingest.orthanc_source import poll_changes
from node.ingest.spool import safe_component
from node.jobs import queue
from node.jobs.creation import JobPlanner
from node.jobs.outbox import Outbox
from node.overrides import effective_pipeline_configs, settings_refresher
from pipelines.spec import PipelineConfig

log = logging.getLogger(__name__)


class CompletionWakeups:
    """Whether a tick of the completion sweep needs the database.

    On PostgreSQL, with the LISTEN connection up, a tick sweeps only when a study changed
    (instances received, a completion asked for: ``NOTIFY pacsnode_studies``), when the earliest
    quiet period ends, or after ``completion.safety_poll_s``; an idle node is not queried every
    ``sweep_interval_s``. While nothing can wake it (SQLite with a receiver in another process,
    the listener reconnecting) every tick sweeps, as before."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._quiet = timedelta(seconds=settings.completion.quiet_period_s)
        self._safety_s = settings.completion.safety_poll_s
        self._waker = db.wakeups.subscribe(notify.STUDIES)
        self._next_due: datetime | None = None
        self._last = -math.inf

    def due(self, now: datetime) -> bool:
        """Sweep now? Consumes a wake-up (one arriving during the sweep makes the next tick sweep)."""
        if self._waker.event.is_set():
            self._waker.event.clear()
            return True
        if not self._db.wakeups.listening:
            return True
        if self._next_due is not None and now >= self._next_due:
            return True
        return time.monotonic() - self._last >= self._safety_s

    def swept(self) -> None:
        """Remember when the earliest receiving study's quiet period ends."""
        self._last = time.monotonic()
        with self._db.read() as session:
            oldest = session.scalar(
                select(func.min(Study.last_received_at)).where(
                    Study.state == StudyState.RECEIVING.value
                )
            )
        self._next_due = None if oldest is None else oldest + self._quiet

    def retry(self) -> None:
        self._waker.set()

    def close(self) -> None:
        self._waker.close()


def completion_sweep(
    settings: Settings,
    db: Database,
    planner: JobPlanner,
    now: datetime,
    outbox: Outbox | None = None,
) -> list[str]:
    with db.write() as session:
        done = completion.sweep(
            session, now, settings.completion, settings.expected_series, planner.complete_study
        )
    for uid in done:
        log.info("study %s complete", uid)
    if outbox is not None and done:  # after the commit above: a message never precedes its row
        outbox.publish_studies(done)
    return done


def lease_expiry(
    settings: Settings, db: Database, now: datetime, outbox: Outbox | None = None
) -> list[int]:
    with db.write() as session:
        expired = queue.expire_leases(session, now, settings.jobs)
    if expired:
        log.warning("requeued jobs with expired leases: %s", expired)
        if outbox is not None:
            outbox.publish_jobs(expired)
    return expired


def _free_mb(settings: Settings) -> float:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(settings.data_dir).free / 2**20


def _deletable_studies(db: Database, older_than: datetime | None) -> list[tuple[int, str]]:
    """Processed studies with nothing left to deliver, oldest first."""
    with db.read() as session:
        undelivered = (
            select(func.count(Delivery.id))
            .join(Artifact, Artifact.id == Delivery.artifact_pk)
            .join(Job, Job.id == Artifact.job_pk)
            .where(
                Job.study_pk == Study.id,
                Delivery.state.in_(
                    [
                        DeliveryState.HELD.value,
                        DeliveryState.PENDING.value,
                        DeliveryState.IN_PROGRESS.value,
                    ]
                ),
            )
            .correlate(Study)
            .scalar_subquery()
        )
        stmt = (
            select(Study.id, Study.study_instance_uid)
            .where(
                Study.state.in_([StudyState.PROCESSED.value, StudyState.SKIPPED.value]),
                undelivered == 0,
            )
            .order_by(Study.last_received_at)
        )
        if older_than is not None:
            stmt = stmt.where(Study.last_received_at < older_than)
        return [(pk, uid) for pk, uid in session.execute(stmt).all()]


def delete_study(settings: Settings, db: Database, study_pk: int, study_uid: str, why: str) -> None:
    """Remove a study's rows and files (received instances and results).

    The folders are the ones the spool and the worker wrote (a hashed UID, the job's key), never
    ``study_uid`` joined to a path: an older row holding ``../../..`` must not pick what is deleted.
    """
    with db.write() as session:
        study = session.get(Study, study_pk)
        if study is None:
            return
        job_ids = list(session.scalars(select(Job.id).where(Job.study_pk == study_pk)))
        session.delete(study)
        audit.record(session, "study.deleted", entity_type="study", entity_id=study_uid, detail=why)
    folders = [settings.spool_dir / safe_component(study_uid)]
    folders += [settings.job_results_dir(job_id) for job_id in job_ids]
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def retention(settings: Settings, db: Database, now: datetime) -> list[str]:
    """Delete delivered studies older than ``retention.days``; more while disk is short."""
    removed: list[str] = []
    cutoff = now - timedelta(days=settings.retention.days)
    for pk, uid in _deletable_studies(db, cutoff):
        delete_study(settings, db, pk, uid, f"older than {settings.retention.days:g} days")
        removed.append(uid)
    watermark = settings.min_free_disk_mb * 2
    if watermark and _free_mb(settings) < watermark:
        for pk, uid in _deletable_studies(db, None):
            if _free_mb(settings) >= watermark:
                break
            delete_study(settings, db, pk, uid, f"free disk below {watermark:g} MB")
            removed.append(uid)
    return removed


def build_scheduler(
    settings: Settings,
    db: Database,
    pipelines: Mapping[str, PipelineConfig],
    *,
    clock: Callable[[], datetime] = utcnow,
    outbox: Outbox | None = None,
    delivery_outbox: DeliveryOutbox | None = None,
) -> BackgroundScheduler:
    current_settings = settings_refresher(settings, db)

    def current_planner() -> JobPlanner:
        """Routing sees the console's edits: disabled pipelines and destinations are skipped."""
        return JobPlanner(current_settings.get(), effective_pipeline_configs(pipelines, db))

    scheduler = BackgroundScheduler(timezone="UTC")
    common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": 30}
    wakeups = CompletionWakeups(db, settings)
    scheduler.add_listener(lambda _event: wakeups.close(), EVENT_SCHEDULER_SHUTDOWN)

    def completion_tick() -> None:
        now = clock()
        if wakeups.due(now):
            try:
                completion_sweep(settings, db, current_planner(), now, outbox)
            except Exception:
                wakeups.retry()  # the next tick tries again
                raise
            wakeups.swept()

    scheduler.add_job(
        completion_tick,
        "interval",
        seconds=settings.completion.sweep_interval_s,
        id="completion_sweep",
        **common,
    )
    scheduler.add_job(
        lambda: lease_expiry(settings, db, clock(), outbox),
        "interval",
        seconds=max(settings.jobs.lease_s / 10, 1.0),
        id="lease_expiry",
        **common,
    )
    if outbox is not None:
        scheduler.add_job(
            lambda: outbox.reconcile(clock(), settings.jobs),
            "interval",
            seconds=max(settings.jobs.republish_after_s / 2, 1.0),
            id="outbox_reconcile",
            **common,
        )
    if delivery_outbox is not None:
        scheduler.add_job(
            lambda: delivery_outbox.publish(clock(), settings.jobs.republish_after_s),
            "interval",
            seconds=max(settings.dispatch.poll_interval_s, 0.2),
            id="delivery_outbox",
            **common,
        )
    scheduler.add_job(
        lambda: retention(settings, db, clock()),
        "interval",
        seconds=settings.retention.interval_s,
        id="retention",
        **common,
    )
    if settings.orthanc_sources:
        # Registered for every source, polled or not: hook-announced pulls that failed wait here.
        interval = min(src.poll_interval_s for src in settings.orthanc_sources)
        scheduler.add_job(
            lambda: poll_changes(settings, db),
            "interval",
            seconds=interval,
            id="orthanc_poll",
            **common,
        )
    return scheduler
