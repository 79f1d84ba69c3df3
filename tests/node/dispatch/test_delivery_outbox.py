"""The delivery outbox and a destination's batch as one Celery message would run it, on SQLite and
PostgreSQL. The broker is replaced by a recorder here (what was published, with which ETA); the
real RabbitMQ path is ``test_celery_deliveries.py``."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update

from core.config import Settings
from core.domain import ArtifactKind, DeliveryState
from node.db.engine import Database
from node.db.orm import Delivery, Job, utcnow
from node.dispatch.delivery_plan import plan_deliveries, resend
from node.dispatch.dispatcher import Dispatcher
from node.dispatch.outbox import DeliveryOutbox
from node.jobs.outbox import QueueDepth
from tests.node.dispatch.conftest import add_job_with_artifacts, with_destinations
from tests.node.dispatch.factory import MadeObject


class Recorder:
    """Publishes nothing; remembers (destination, queue, eta) and reports a queue depth."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, datetime | None]] = []
        self.depth = QueueDepth(0, 1)

    def publish(self, job_id: int, queue: str, eta: datetime | None = None) -> None:
        raise AssertionError("the delivery outbox publishes no jobs")

    def publish_destination(self, destination: str, queue: str, eta: datetime | None) -> None:
        self.sent.append((destination, queue, eta))

    def queue_depths(self, queues: Collection[str]) -> dict[str, QueueDepth]:
        return {q: self.depth for q in queues}


def _setup(
    db: Database, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> tuple[Settings, int]:
    cfg = with_destinations(
        settings,
        [
            {"name": "a", "kind": "folder", "path": str(tmp_path / "a")},
            {"name": "b", "kind": "folder", "path": str(tmp_path / "b")},
        ],
        backoff_base_s=10,
        jitter=0,
    )
    job_id = add_job_with_artifacts(db, cfg, results)
    with db.write() as session:
        plan_deliveries(session, session.get_one(Job, job_id), ["a", "b"], held=False)
    return cfg, job_id


def test_publishes_each_destination_once_per_attempt_with_backoff_as_eta(
    db: Database, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    cfg, _ = _setup(db, settings, tmp_path, results)
    recorder = Recorder()
    outbox = DeliveryOutbox(db, recorder, "deliveries")
    now = utcnow()
    assert outbox.publish(now, republish_after_s=30) == ["a", "b"]
    assert [(d, q) for d, q, _ in recorder.sent] == [("a", "deliveries"), ("b", "deliveries")]
    assert outbox.publish(now, republish_after_s=30) == []  # published already: nothing new

    # destination a fails: the dispatcher's backoff is the next message's ETA
    results[ArtifactKind.SEG].path.write_bytes(b"not DICOM")
    dispatcher = Dispatcher(cfg, db)
    assert dispatcher.run_destination("a") == 2  # overlay and PDF; the SEG failed, the SR waits
    with db.read() as session:
        retry_at = session.scalar(
            select(Delivery.next_attempt_at)
            .join(Delivery.artifact)
            .where(Delivery.destination_name == "a", Delivery.attempts == 1)
            .where(Delivery.state == "pending")
        )
    assert retry_at is not None
    assert retry_at >= now + timedelta(seconds=9)
    recorder.sent.clear()
    assert outbox.publish(utcnow(), republish_after_s=30) == ["a"]
    # the SR (due, waiting for its SEG) now; the SEG's retry at its backoff
    assert recorder.sent == [("a", "deliveries", None), ("a", "deliveries", retry_at)]


def test_a_duplicate_message_sends_nothing_twice(
    db: Database, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    cfg, _ = _setup(db, settings, tmp_path, results)
    first, second = Dispatcher(cfg, db, "c1"), Dispatcher(cfg, db, "c2")
    assert first.run_destination("a") == 4
    assert second.run_destination("a") == 0  # the same message again, on another consumer
    assert first.run_destination("a") == 0
    assert len(list((tmp_path / "a").rglob("*.dcm"))) == 4
    assert not (tmp_path / "b").exists()  # a message names one destination's batch only
    assert second.run_destination("b") == 4


def test_reconciliation_republishes_deliveries_whose_message_was_lost(
    db: Database, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    _setup(db, settings, tmp_path, results)
    recorder = Recorder()
    outbox = DeliveryOutbox(db, recorder, "deliveries")
    t0 = utcnow()
    outbox.publish(t0, republish_after_s=30)
    recorder.sent.clear()
    # the messages vanished (broker lost its queue); 10 s later nothing is republished yet
    assert outbox.publish(t0 + timedelta(seconds=10), republish_after_s=30) == []
    # a message still waits in the queue: no flooding
    recorder.depth = QueueDepth(messages=2, consumers=1)
    assert outbox.publish(t0 + timedelta(seconds=40), republish_after_s=30) == []
    # the queue is empty: due deliveries are published again, now (no ETA)
    recorder.depth = QueueDepth(messages=0, consumers=0)
    assert outbox.publish(t0 + timedelta(seconds=40), republish_after_s=30) == ["a", "b"]
    assert {eta for *_, eta in recorder.sent} == {None}


def test_moving_back_to_pending_asks_for_a_new_message(
    db: Database, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    cfg, _ = _setup(db, settings, tmp_path, results)
    recorder = Recorder()
    outbox = DeliveryOutbox(db, recorder, "deliveries")
    outbox.publish(utcnow(), republish_after_s=30)
    Dispatcher(cfg, db).run_destination("b")
    with db.write() as session:  # a delivery that failed for good, resent from the console
        delivery_id = session.scalars(
            select(Delivery.id).where(Delivery.destination_name == "b").limit(1)
        ).one()
        session.execute(update(Delivery).where(Delivery.id == delivery_id).values(state="failed"))
    with db.write() as session:
        resend(session, delivery_id, actor="admin1")
    with db.read() as session:
        delivery = session.get_one(Delivery, delivery_id)
        assert delivery.state == DeliveryState.PENDING.value and delivery.published_at is None
    recorder.sent.clear()
    assert outbox.publish(utcnow(), republish_after_s=30) == ["b"]


def test_a_consumer_killed_mid_send_is_republished_once_its_lease_expired(
    db: Database, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    cfg, _ = _setup(db, settings, tmp_path, results)
    recorder = Recorder()
    outbox = DeliveryOutbox(db, recorder, "deliveries")
    t0 = utcnow()
    outbox.publish(t0, republish_after_s=30)
    with db.write() as session:  # a consumer claimed destination a, then died (no record)
        session.execute(
            update(Delivery)
            .where(Delivery.destination_name == "a")
            .values(
                state="in_progress", lease_owner="dead", lease_expires_at=t0 + timedelta(seconds=60)
            )
        )
    Dispatcher(cfg, db).run_destination("b")
    recorder.sent.clear()
    assert outbox.publish(t0 + timedelta(seconds=40), republish_after_s=30) == []  # lease holds
    later = t0 + timedelta(seconds=90)
    assert outbox.publish(later, republish_after_s=30) == ["a"]
    assert recorder.sent == [("a", "deliveries", None)]
