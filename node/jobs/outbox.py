"""Handing committed jobs to a message broker: the database row first, its message after commit.

The job row is the record of truth; a message only says "job N may be worth claiming". So a
publish happens after the transaction that made the job queued has committed, a failed publish
loses nothing (the row is still queued), and :meth:`Outbox.reconcile` — run by the scheduler —
re-publishes jobs that stayed queued while their queue holds fewer messages than that, which is
what a lost publish, a broker that lost its queue, or a crash between commit and publish leave
behind. A duplicate message is harmless: the worker's claim (``queue.claim_job``) takes a job only
while it is queued and due.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import select

from core.config import JobSettings
from core.domain import JobState
from node.db.engine import Database
from node.db.orm import Job, Study

log = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    """The broker could not be reached: the job stays queued for reconciliation."""


@dataclass(frozen=True)
class QueueDepth:
    messages: int  # ready, not yet delivered to a consumer
    consumers: int


class JobPublisher(Protocol):
    """What the outbox needs from an engine (``node.jobs.celery_engine.CeleryPublisher``)."""

    def publish(self, job_id: int, queue: str, eta: datetime | None = None) -> None: ...

    def queue_depths(self, queues: Collection[str]) -> dict[str, QueueDepth]: ...


QueueOf = Callable[[str], str]  # pipeline name -> queue name


@dataclass(frozen=True)
class _QueuedJob:
    job_id: int
    queue: str
    due: datetime


class Outbox:
    """Publishes queued jobs' ids to their pipeline's queue; safe to call again for the same job."""

    def __init__(self, db: Database, publisher: JobPublisher, queue_of: QueueOf) -> None:
        self.db = db
        self.publisher = publisher
        self.queue_of = queue_of

    def publish_jobs(self, job_ids: Iterable[int]) -> list[int]:
        """Publish those of ``job_ids`` that are (still) queued; return the ids published."""
        ids = list(job_ids)
        return self._publish(self._queued(Job.id.in_(ids))) if ids else []

    def publish_studies(self, study_uids: Iterable[str]) -> list[int]:
        """Publish the queued jobs of these studies (just made complete by the sweep)."""
        uids = list(study_uids)
        if not uids:
            return []
        study_pks = select(Study.id).where(Study.study_instance_uid.in_(uids))
        return self._publish(self._queued(Job.study_pk.in_(study_pks)))

    def reconcile(self, now: datetime, settings: JobSettings) -> list[int]:
        """Re-publish jobs due for ``republish_after_s`` and still queued, for every queue whose
        broker queue holds fewer ready messages than it has such jobs; warn about queues that
        hold jobs but have no consumer (no worker serves that device class)."""
        cutoff = now - timedelta(seconds=settings.republish_after_s)
        stale = self._queued(Job.next_attempt_at <= cutoff)
        if not stale:
            return []
        by_queue: dict[str, list[_QueuedJob]] = {}
        for job in stale:
            by_queue.setdefault(job.queue, []).append(job)
        try:
            depths = self.publisher.queue_depths(by_queue)
        except BrokerUnavailable as exc:
            log.warning("outbox: broker unavailable (%s); %d job(s) wait", exc, len(stale))
            return []
        republish: list[_QueuedJob] = []
        for queue, jobs in sorted(by_queue.items()):
            depth = depths.get(queue, QueueDepth(0, 0))
            if depth.consumers == 0:
                log.warning(
                    "queue %r: %d job(s) waiting and no worker consumes it", queue, len(jobs)
                )
            if depth.messages < len(jobs):
                republish.extend(jobs)
        published = self._publish(republish)
        if published:
            log.warning(
                "outbox: re-published %d job(s) that stayed queued: %s", len(published), published
            )
        return published

    def _queued(self, condition: object) -> list[_QueuedJob]:
        with self.db.read() as session:
            rows = session.execute(
                select(Job.id, Job.pipeline_name, Job.next_attempt_at)
                .where(Job.state == JobState.QUEUED.value, condition)  # type: ignore[arg-type]
                .order_by(Job.next_attempt_at, Job.id)
            ).all()
        return [_QueuedJob(job_id, self.queue_of(name), _aware(due)) for job_id, name, due in rows]

    def _publish(self, jobs: Iterable[_QueuedJob]) -> list[int]:
        published: list[int] = []
        for job in jobs:
            try:
                self.publisher.publish(job.job_id, job.queue, eta=job.due)
            except BrokerUnavailable as exc:
                log.warning(
                    "job %s: publish failed (%s); reconciliation retries it", job.job_id, exc
                )
                break
            published.append(job.job_id)
        return published


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
