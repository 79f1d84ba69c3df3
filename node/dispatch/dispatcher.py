"""The dispatcher: claims due deliveries under a lease, sends them per destination, records each.

One claim transaction marks a batch IN_PROGRESS (attempt counted before sending, so a crash mid-send
still counts); the sends happen outside any transaction, one thread per destination, so a
destination that is down (waiting out its timeout) never stalls the others; one short transaction
per destination records every object's outcome. Failures are retried with exponential backoff and
jitter until ``dispatch.max_attempts``, then the delivery is FAILED and the console can resend it.
The artifact files never change between attempts, so a retry re-sends the same SOP Instance UIDs.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from core.config import DestinationSettings, Settings
from core.domain import ArtifactKind, DeliveryState, ReviewState
from node.backoff import backoff_delay
from node.db import notify
from node.db.engine import Database
from node.db.orm import Delivery, Job, utcnow
from node.db.repositories import deliveries as repo
from node.dispatch.delivery_plan import destination_settings
from node.dispatch.rejection import plan_rejection_notes
from node.dispatch.sender import SendOutcome
from node.dispatch.targets import sender_for
from node.overrides import settings_refresher

log = logging.getLogger(__name__)

BATCH_LIMIT = 64  # deliveries claimed per run; one association / request series per destination


@dataclass(frozen=True)
class ClaimedItem:
    """What a send needs from a claimed delivery, detached from its session."""

    delivery_id: int
    destination_name: str
    kind: ArtifactKind
    path: Path
    prerequisite_ids: tuple[int, ...]  # SEG/overlay deliveries this SR must follow


class Dispatcher:
    """Sends planned deliveries; several dispatchers (processes or threads) may share one database."""

    def __init__(self, settings: Settings, db: Database, worker_id: str | None = None) -> None:
        self._settings = settings_refresher(settings, db)
        self.db = db
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:dispatch"
        self.rng = random.Random()
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._wake = threading.Event()

    @property
    def settings(self) -> Settings:
        """The configuration with the console's destination switches applied (re-read every
        few seconds, so disabling a destination in the console stops sends to it)."""
        return self._settings.get()

    # -- entry points -------------------------------------------------------------------------
    def run_once(self, now: datetime | None = None) -> int:
        """Claim what is due, send it (destinations in parallel), record it; return objects sent."""
        started = utcnow()
        offset = (now - started) if now is not None else timedelta(0)  # a test's clock
        batches = self._claim(started + offset, exclude=set())
        if not batches:
            return 0
        with ThreadPoolExecutor(max_workers=len(batches), thread_name_prefix="dispatch") as pool:
            futures = [
                pool.submit(self._deliver, name, items, offset) for name, items in batches.items()
            ]
            return sum(f.result() for f in futures)

    def run_destination(self, name: str) -> int:
        """Claim, send and record the due deliveries of one destination: the body of a Celery
        delivery message (``jobs.engine: celery``). A duplicate or late message finds them
        claimed or delivered already and sends nothing; a failure is rescheduled with the
        dispatcher's own backoff, which the delivery outbox publishes as the next message's ETA."""
        batches = self._claim(utcnow(), exclude=set(), only=name)
        items = batches.get(name)
        return self._deliver(name, items, timedelta(0)) if items else 0

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set; a destination still busy sending is not claimed for again.

        Between claims it sleeps until a committed delivery wakes it (``node.db.notify``), a
        destination it was sending to is free again, the next retry is due, or the safety poll
        comes round."""
        cfg = self.settings.dispatch
        waker = self.db.wakeups.subscribe(notify.DELIVERIES)
        self._wake = waker.event  # wake() and finished sends set the same event
        pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dispatch")
        try:
            while not stop.is_set():
                with self._busy_lock:
                    busy = set(self._busy)
                try:
                    batches, due_in = self._claim_due(utcnow(), exclude=busy)
                except Exception:  # noqa: BLE001 - process boundary: log, wait, go on
                    log.exception("claiming deliveries failed; retrying")
                    batches, due_in = {}, cfg.poll_interval_s
                for name, items in batches.items():
                    with self._busy_lock:
                        self._busy.add(name)
                    future = pool.submit(self._deliver, name, items, timedelta(0))
                    future.add_done_callback(self._done_callback(name))
                if due_in is None or due_in > 0:
                    waker.wait(
                        stop,
                        due_in_s=due_in,
                        poll_s=cfg.poll_interval_s,
                        safety_s=cfg.safety_poll_s,
                    )
        finally:
            pool.shutdown(wait=True)
            waker.close()

    def wake(self) -> None:
        """Look for due deliveries now (committed deliveries do this by themselves)."""
        self._wake.set()

    def _done_callback(self, name: str) -> Callable[[Future[int]], None]:
        def done(future: Future[int]) -> None:
            with self._busy_lock:
                self._busy.discard(name)
            self._wake.set()  # the destination is free again: its next due batch may go now
            if future.exception() is not None:
                log.error("sending to %s failed: %s", name, future.exception())

        return done

    # -- claim --------------------------------------------------------------------------------
    def _claim(
        self, now: datetime, exclude: set[str], only: str | None = None
    ) -> dict[str, list[ClaimedItem]]:
        return self._claim_due(now, exclude, only)[0]

    def _claim_due(
        self, now: datetime, exclude: set[str], only: str | None = None
    ) -> tuple[dict[str, list[ClaimedItem]], float | None]:
        """The batches claimed now per destination (only ``only``'s when given) and 0; or none
        and the seconds until the next delivery is due (None: nothing pending, or what is due
        waits for another delivery)."""
        timeout = self.settings.dispatch.timeout_s
        batches: dict[str, list[ClaimedItem]] = defaultdict(list)
        disabled = {d.name for d in self.settings.destinations if not d.enabled}
        skip = exclude | disabled
        with self.db.read() as session:  # a read: an idle dispatcher never takes a write lock
            due = repo.next_due_at(session, exclude_destinations=skip, only_destination=only)
        if due is None:
            return {}, None
        if (due - now).total_seconds() > 0:
            return {}, (due - now).total_seconds()
        with self.db.write() as session:
            claimed = repo.claim_due(
                session,
                now=now,
                limit=BATCH_LIMIT,
                exclude_destinations=skip,
                only_destination=only,
            )
            per_destination: dict[str, int] = defaultdict(int)
            for delivery in claimed:
                per_destination[delivery.destination_name] += 1
            for delivery in claimed:
                item = self._claim_one(
                    session,
                    delivery,
                    now,
                    timeout * (per_destination[delivery.destination_name] + 2),
                )
                if item is not None:
                    batches[item.destination_name].append(item)
        for items in batches.values():
            items.sort(key=lambda i: (i.kind.dispatch_rank, i.delivery_id))
        if batches:
            return dict(batches), 0.0
        # Due but nothing claimable: SRs waiting for their SEG, rows locked by another dispatcher.
        # A delivered SEG or a released row wakes this one; else sleep until the next retry.
        with self.db.read() as session:
            later = repo.next_due_at(session, exclude_destinations=exclude | disabled, after=now)
        return {}, None if later is None else (later - now).total_seconds()

    def _claim_one(
        self, session: Session, delivery: Delivery, now: datetime, lease_s: float
    ) -> ClaimedItem | None:
        artifact = delivery.artifact
        dest = destination_settings(self.settings, delivery.destination_name)
        problem = ""
        if dest is None:
            problem = f"unknown destination {delivery.destination_name!r}"
        elif not artifact.validated:
            problem = "artifact was not validated; it may not leave the node"
        if problem:
            delivery.last_error = problem
            delivery.last_error_at = now
            repo.transition(
                session, delivery, DeliveryState.FAILED, action="delivery.failed", detail=problem
            )
            return None
        assert dest is not None
        if not dest.enabled:
            return None  # stays PENDING until the destination is enabled again
        if delivery.state == DeliveryState.IN_PROGRESS.value:
            detail = f"lease of {delivery.lease_owner} expired"
            repo.transition(
                session,
                delivery,
                DeliveryState.PENDING,
                action="delivery.lease_expired",
                detail=detail,
            )
        delivery.attempts += 1
        delivery.lease_owner = self.worker_id
        delivery.lease_expires_at = now + timedelta(seconds=lease_s)
        repo.transition(
            session,
            delivery,
            DeliveryState.IN_PROGRESS,
            action="delivery.claimed",
            actor=self.worker_id,
            detail=f"attempt {delivery.attempts}",
        )
        prerequisites = tuple(d.id for d in repo.prerequisites_of(session, delivery))
        path = Path(artifact.path)
        return ClaimedItem(
            delivery_id=delivery.id,
            destination_name=delivery.destination_name,
            kind=ArtifactKind(artifact.kind),
            path=path if path.is_absolute() else self.settings.data_dir / path,
            prerequisite_ids=prerequisites,
        )

    # -- send and record ----------------------------------------------------------------------
    def _deliver(self, name: str, items: list[ClaimedItem], clock_offset: timedelta) -> int:
        dest = destination_settings(self.settings, name)
        if dest is None:  # removed between claim and send; the lease will expire and re-check it
            return 0
        try:
            outcomes = self._send_in_order(dest, items)
        except Exception as exc:  # noqa: BLE001 - a sender bug must not wedge these deliveries
            log.exception("sender for %s crashed", name)
            error = f"sender crashed: {type(exc).__name__}: {exc}"
            outcomes = {i.delivery_id: SendOutcome(i.path, False, error=error) for i in items}
        return self._record(items, outcomes, utcnow() + clock_offset)

    def _send_in_order(
        self, dest: DestinationSettings, items: list[ClaimedItem]
    ) -> dict[int, SendOutcome | None]:
        """SEG, overlay and PDF first in one batch, then the SRs whose prerequisites were stored.

        ``None`` for an SR that was held back (its SEG failed in this batch): it returns to
        PENDING without using up an attempt."""
        sender = sender_for(
            dest, timeout_s=self.settings.dispatch.timeout_s, calling_ae=self.settings.ae_title
        )
        first = [i for i in items if i.kind is not ArtifactKind.SR]
        srs = [i for i in items if i.kind is ArtifactKind.SR]
        results: dict[int, SendOutcome | None] = {}
        if first:
            for item, outcome in zip(first, sender.send([i.path for i in first]), strict=True):
                results[item.delivery_id] = outcome
        failed_here = {i for i, o in results.items() if o is not None and not o.ok}
        ready = [i for i in srs if not failed_here.intersection(i.prerequisite_ids)]
        for item in srs:
            if item not in ready:
                results[item.delivery_id] = None
        if ready:
            for item, outcome in zip(ready, sender.send([i.path for i in ready]), strict=True):
                results[item.delivery_id] = outcome
        return results

    def _record(
        self, items: list[ClaimedItem], outcomes: dict[int, SendOutcome | None], now: datetime
    ) -> int:
        cfg = self.settings.dispatch
        sent = 0
        with self.db.write() as session:
            rejected_jobs: set[int] = set()
            for item in items:
                delivery = session.get(Delivery, item.delivery_id)
                outcome = outcomes.get(item.delivery_id)
                if delivery is not None and _stored_after_rejection(delivery, outcome):
                    sent += 1
                    self._record_late(session, delivery, now)
                    rejected_jobs.add(delivery.artifact.job_pk)
                    continue
                if delivery is None or delivery.state != DeliveryState.IN_PROGRESS.value:
                    continue  # deleted, or resent/cancelled by someone else meanwhile
                delivery.lease_owner = ""
                delivery.lease_expires_at = None
                if outcome is None:
                    delivery.attempts = max(0, delivery.attempts - 1)
                    delivery.next_attempt_at = now
                    repo.transition(
                        session,
                        delivery,
                        DeliveryState.PENDING,
                        action="delivery.waiting",
                        actor=self.worker_id,
                        detail="SEG/overlay for this SR not stored yet",
                    )
                elif outcome.ok:
                    sent += 1
                    delivery.delivered_at = now
                    # last_error (and last_error_at) stay: the destination's health column shows
                    # its last error even once a retry got through; the study page hides it
                    repo.transition(
                        session,
                        delivery,
                        DeliveryState.DELIVERED,
                        action="delivery.delivered",
                        actor=self.worker_id,
                        detail=outcome.status,
                    )
                elif delivery.attempts >= cfg.max_attempts:
                    delivery.last_error = outcome.error[:4000]
                    delivery.last_error_at = now
                    repo.transition(
                        session,
                        delivery,
                        DeliveryState.FAILED,
                        action="delivery.failed",
                        actor=self.worker_id,
                        detail=f"attempt {delivery.attempts}: {outcome.error}",
                    )
                else:
                    delay = backoff_delay(
                        delivery.attempts,
                        cfg.backoff_base_s,
                        cfg.backoff_max_s,
                        cfg.jitter,
                        self.rng,
                    )
                    delivery.next_attempt_at = now + timedelta(seconds=delay)
                    delivery.last_error = outcome.error[:4000]
                    delivery.last_error_at = now
                    repo.transition(
                        session,
                        delivery,
                        DeliveryState.PENDING,
                        action="delivery.retry",
                        actor=self.worker_id,
                        detail=f"attempt {delivery.attempts} failed ({outcome.error}); next in {delay:.1f}s",
                    )
            for job_pk in sorted(rejected_jobs):
                job = session.get_one(Job, job_pk)
                if job.review_state == ReviewState.REJECTED.value:
                    plan_rejection_notes(session, self.settings, job)
        return sent

    def _record_late(self, session: Session, delivery: Delivery, now: datetime) -> None:
        """A send that was in flight when its job was rejected reached the destination after
        all: it is recorded as delivered, and the caller plans a rejection note for it."""
        delivery.lease_owner = ""
        delivery.lease_expires_at = None
        delivery.delivered_at = now
        repo.transition(
            session,
            delivery,
            DeliveryState.DELIVERED,
            action="delivery.delivered",
            actor=self.worker_id,
            detail="stored while the job was being rejected; a rejection note follows",
        )


def _stored_after_rejection(delivery: Delivery, outcome: SendOutcome | None) -> bool:
    return (
        delivery.state == DeliveryState.CANCELLED.value
        and outcome is not None
        and outcome.ok
        and ArtifactKind(delivery.artifact.kind).is_result
    )
