"""Handing due deliveries to the broker (``jobs.engine: celery``): one message per destination.

The delivery rows are the record of truth, as the job rows are for jobs (``node.jobs.outbox``);
a message only says "destination X may have deliveries worth claiming", and the consumer claims
them under the dispatcher's lease (:meth:`node.dispatch.dispatcher.Dispatcher.run_destination`).
So a duplicate message sends nothing twice, and there is one retry mechanism: the dispatcher's
backoff sets ``next_attempt_at`` and this outbox publishes the next message with that as its ETA.

Run by the leader scheduler, every few tenths of a second:

- deliveries not yet published for their current attempt (``published_at`` is None: planned by
  a worker, approved or resent in the console, rescheduled after a failure) are published, one
  message per destination with the earliest ``next_attempt_at`` as ETA;
- reconciliation: deliveries still due ``jobs.republish_after_s`` after their message went out
  (a lost message, a broker that lost its queue, a consumer killed mid-send whose lease expired,
  a destination enabled again) are published again while the queue holds fewer ready messages
  than such destinations; a queue with due deliveries and no consumer is logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import and_, or_, select, update

from core.domain import DeliveryState
from node.db.engine import Database
from node.db.orm import Delivery
from node.jobs.outbox import BrokerUnavailable, JobPublisher, QueueDepth

log = logging.getLogger(__name__)


class DeliveryPublisher(JobPublisher, Protocol):
    """What the delivery outbox needs from the engine (``CeleryPublisher``)."""

    def publish_destination(self, destination: str, queue: str, eta: datetime | None) -> None: ...


@dataclass(frozen=True)
class _Row:
    delivery_id: int
    destination: str
    state: str
    attempts: int
    due: datetime
    published: bool  # a message went out for this attempt before (reconciliation)


class DeliveryOutbox:
    """Publishes destinations with unpublished or stale due deliveries to ``queue``."""

    def __init__(self, db: Database, publisher: DeliveryPublisher, queue: str) -> None:
        self.db = db
        self.publisher = publisher
        self.queue = queue

    def publish(self, now: datetime, republish_after_s: float) -> list[str]:
        """Publish what is due for a message; return the destinations published."""
        rows = self._candidates(now, now - timedelta(seconds=republish_after_s))
        if not rows:
            return []
        fresh: dict[str, list[_Row]] = {}
        stale: dict[str, list[_Row]] = {}
        for row in rows:
            (stale if row.published else fresh).setdefault(row.destination, []).append(row)
        if stale and not self._queue_needs(len(stale)):
            stale = {}
        published: list[_Row] = []
        names: set[str] = set()
        for name, eta, group in _messages(fresh, stale, now):
            try:
                self.publisher.publish_destination(name, self.queue, eta)
            except BrokerUnavailable as exc:
                log.warning("deliveries to %s: publish failed (%s); retried next run", name, exc)
                break
            published.extend(group)
            names.add(name)
        if stale and names:
            log.warning("delivery outbox: re-published stale deliveries for %s", sorted(stale))
        self._mark(published, now)
        return sorted(names)

    def _queue_needs(self, stale_destinations: int) -> bool:
        """Re-publish only when the queue holds fewer ready messages than stale destinations (a
        consumer that is merely slow is not flooded), and say when nobody consumes it."""
        try:
            depth = self.publisher.queue_depths([self.queue]).get(self.queue, QueueDepth(0, 0))
        except BrokerUnavailable as exc:
            log.warning("delivery outbox: broker unavailable (%s)", exc)
            return False
        if depth.consumers == 0:
            log.warning(
                "queue %r: deliveries to %d destination(s) waiting and no worker consumes it",
                self.queue,
                stale_destinations,
            )
        return depth.messages < stale_destinations

    def _candidates(self, now: datetime, cutoff: datetime) -> list[_Row]:
        pending = Delivery.state == DeliveryState.PENDING.value
        old_message = or_(Delivery.published_at.is_(None), Delivery.published_at <= cutoff)
        condition = or_(
            and_(pending, Delivery.published_at.is_(None)),
            and_(pending, Delivery.next_attempt_at <= cutoff, Delivery.published_at <= cutoff),
            and_(
                Delivery.state == DeliveryState.IN_PROGRESS.value,
                Delivery.lease_expires_at.is_not(None),
                Delivery.lease_expires_at < now,
                old_message,
            ),
        )
        with self.db.read() as session:
            result = session.execute(
                select(
                    Delivery.id,
                    Delivery.destination_name,
                    Delivery.state,
                    Delivery.attempts,
                    Delivery.next_attempt_at,
                    Delivery.published_at,
                )
                .where(condition)
                .order_by(Delivery.next_attempt_at, Delivery.id)
            ).all()
        return [
            _Row(
                delivery_id=r.id,
                destination=r.destination_name,
                state=r.state,
                attempts=r.attempts,
                due=_aware(r.next_attempt_at),
                published=r.published_at is not None or r.state != DeliveryState.PENDING.value,
            )
            for r in result
        ]

    def _mark(self, rows: list[_Row], now: datetime) -> None:
        """Record the publish on rows that did not move meanwhile (a consumer that claimed and
        rescheduled one has made a new attempt, which must get its own message)."""
        if not rows:
            return
        with self.db.write() as session:
            for row in rows:
                session.execute(
                    update(Delivery)
                    .where(
                        Delivery.id == row.delivery_id,
                        Delivery.state == row.state,
                        Delivery.attempts == row.attempts,
                    )
                    .values(published_at=now)
                )


def _messages(
    fresh: dict[str, list[_Row]], stale: dict[str, list[_Row]], now: datetime
) -> list[tuple[str, datetime | None, list[_Row]]]:
    """(destination, ETA, rows it covers): one message now for what is due now, and one per
    second in which later attempts fall due (a failed SEG's retry and the SR already due that
    waits for it need different messages: a single earliest-ETA one would miss the retry)."""
    out: list[tuple[str, datetime | None, list[_Row]]] = []
    for name in sorted(set(fresh) | set(stale)):
        due_now = stale.get(name, []) + [r for r in fresh.get(name, []) if r.due <= now]
        if due_now:
            out.append((name, None, due_now))
        later: dict[datetime, list[_Row]] = {}
        for row in fresh.get(name, []):
            if row.due > now:
                later.setdefault(row.due.replace(microsecond=0), []).append(row)
        for _, rows in sorted(later.items()):
            out.append((name, max(r.due for r in rows), rows))
    return out


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
