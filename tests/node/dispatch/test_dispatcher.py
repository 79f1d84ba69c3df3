"""The dispatcher on SQLite and PostgreSQL: order, retries and backoff, failure, leases, concurrency."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread

from core.config import Settings
from core.domain import ArtifactKind, DeliveryState
from node.backoff import backoff_delay
from node.db.engine import Database
from node.db.orm import Job, utcnow
from node.db.repositories import audit
from node.db.repositories import deliveries as repo
from node.dispatch.delivery_plan import plan_deliveries, resend
from node.dispatch.dispatcher import Dispatcher
from tests.conftest import free_port
from tests.node.dispatch.conftest import StoreScp, add_job_with_artifacts, with_destinations
from tests.node.dispatch.factory import MadeObject
from tests.orthanc.harness import OrthancProcess


def plan(db: Database, job_id: int, destinations: list[str], held: bool = False) -> None:
    with db.write() as session:
        plan_deliveries(session, session.get_one(Job, job_id), destinations, held=held)


def states(db: Database, job_id: int) -> dict[tuple[str, str], str]:
    with db.read() as session:
        return {
            (d.artifact.kind, d.destination_name): d.state for d in repo.for_job(session, job_id)
        }


def row(db: Database, job_id: int, kind: str) -> tuple[int, int, str, datetime]:
    with db.read() as session:
        d = next(d for d in repo.for_job(session, job_id) if d.artifact.kind == kind)
        return d.id, d.attempts, d.last_error, d.next_attempt_at


def folder(tmp_path: Path, name: str = "export") -> dict[str, object]:
    return {"name": name, "kind": "folder", "path": str(tmp_path / name)}


def test_delivers_each_object_once_seg_before_sr(
    db: Database, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    cfg = with_destinations(settings, [folder(tmp_path)])
    job_id = add_job_with_artifacts(db, cfg, results)
    plan(db, job_id, ["export"])
    assert Dispatcher(cfg, db).run_once() == 4
    assert set(states(db, job_id).values()) == {"delivered"}
    assert Dispatcher(cfg, db).run_once() == 0  # nothing due any more
    with db.read() as session:
        delivered = [e.detail for e in reversed(audit.query(session, action="delivery.delivered"))]
        by_kind = {d.artifact.kind: d.delivered_at for d in repo.for_job(session, job_id)}
    assert len(delivered) == 4
    assert by_kind["seg"] <= by_kind["sr"]
    assert len(list((tmp_path / "export").rglob("*.dcm"))) == 4


def test_sr_waits_for_its_seg_and_failures_back_off_then_fail(
    db: Database, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    cfg = with_destinations(
        settings, [folder(tmp_path)], max_attempts=3, backoff_base_s=10, jitter=0
    )
    job_id = add_job_with_artifacts(db, cfg, results)
    plan(db, job_id, ["export"])
    seg_bytes = results[ArtifactKind.SEG].path.read_bytes()
    results[ArtifactKind.SEG].path.write_bytes(b"corrupt")  # the SEG cannot be sent
    dispatcher = Dispatcher(cfg, db)
    t0 = utcnow()
    assert dispatcher.run_once(t0) == 2  # overlay and PDF
    assert states(db, job_id) == {
        ("seg", "export"): "pending",
        ("overlay", "export"): "delivered",
        ("pdf", "export"): "delivered",
        ("sr", "export"): "pending",
    }
    seg_id, seg_attempts, seg_error, first_retry = row(db, job_id, "seg")
    _, sr_attempts, _, _ = row(db, job_id, "sr")
    assert seg_attempts == 1 and "unreadable" in seg_error
    assert sr_attempts == 0  # waiting for the SEG costs no attempt
    assert 9 <= (first_retry - t0).total_seconds() <= 11
    assert dispatcher.run_once(t0 + timedelta(seconds=5)) == 0  # backing off
    assert dispatcher.run_once(first_retry + timedelta(seconds=1)) == 0
    _, seg_attempts, _, second_retry = row(db, job_id, "seg")
    assert seg_attempts == 2
    assert 19 <= (second_retry - first_retry).total_seconds() <= 22  # exponential: 10 s, then 20 s
    assert dispatcher.run_once(second_retry + timedelta(seconds=1)) == 0
    assert states(db, job_id)[("seg", "export")] == "failed"
    assert states(db, job_id)[("sr", "export")] == "pending"

    results[ArtifactKind.SEG].path.write_bytes(seg_bytes)  # fixed; the console resends
    with db.write() as session:
        resend(session, seg_id, actor="admin")
    # SEG, then the SR in the same batch (the test clock is ahead of the resend's real time)
    assert dispatcher.run_once(second_retry + timedelta(seconds=2)) == 2
    assert set(states(db, job_id).values()) == {"delivered"}


def test_unvalidated_artifact_never_leaves(
    db: Database, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    cfg = with_destinations(settings, [folder(tmp_path)])
    job_id = add_job_with_artifacts(db, cfg, results, validated=False)
    plan(db, job_id, ["export"])
    assert Dispatcher(cfg, db).run_once() == 0
    assert set(states(db, job_id).values()) == {"failed"}
    assert not (tmp_path / "export").exists()


def test_held_and_cancelled_are_never_sent(
    db: Database, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    cfg = with_destinations(settings, [folder(tmp_path)])
    job_id = add_job_with_artifacts(db, cfg, results)
    plan(db, job_id, ["export"], held=True)
    assert Dispatcher(cfg, db).run_once() == 0
    assert set(states(db, job_id).values()) == {"held"}


def test_expired_lease_is_taken_over(
    db: Database, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    cfg = with_destinations(settings, [folder(tmp_path)])
    job_id = add_job_with_artifacts(db, cfg, results)
    plan(db, job_id, ["export"])
    crashed = Dispatcher(cfg, db, worker_id="crashed")
    crashed._claim(utcnow(), exclude=set())  # claimed, then the process died before sending
    assert set(states(db, job_id).values()) == {"in_progress"}
    survivor = Dispatcher(cfg, db, worker_id="survivor")
    assert survivor.run_once() == 0  # lease still valid
    assert survivor.run_once(utcnow() + timedelta(hours=2)) == 4
    with db.read() as session:
        assert len(audit.query(session, action="delivery.lease_expired")) == 4


def test_two_dispatchers_never_send_the_same_delivery(
    db: Database, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    cfg = with_destinations(
        settings, [folder(tmp_path, "a"), folder(tmp_path, "b"), folder(tmp_path, "c")]
    )
    job_ids = [add_job_with_artifacts(db, cfg, results)]
    plan(db, job_ids[0], ["a", "b", "c"])
    barrier = threading.Barrier(3)
    sent: list[int] = []

    def race(name: str) -> None:
        dispatcher = Dispatcher(cfg, db, worker_id=name)
        barrier.wait()
        for _ in range(3):
            sent.append(dispatcher.run_once())

    threads = [threading.Thread(target=race, args=(f"d{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(sent) == 12
    with db.read() as session:
        claims = Counter(
            e.entity_id for e in audit.query(session, action="delivery.claimed", limit=1000)
        )
    assert len(claims) == 12 and set(claims.values()) == {1}


@pytest.mark.slow
def test_a_hanging_destination_does_not_stall_the_others(
    db: Database, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    with socket.socket() as blackhole:  # accepts TCP, never answers the association request
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        port = blackhole.getsockname()[1]
        hanging = {
            "name": "hang",
            "kind": "dicom",
            "ae_title": "HANG",
            "host": "127.0.0.1",
            "port": port,
        }
        cfg = with_destinations(
            settings, [hanging, folder(tmp_path)], timeout_s=5, poll_interval_s=0.1
        )
        job_id = add_job_with_artifacts(db, cfg, results)
        plan(db, job_id, ["hang", "export"])
        stop = threading.Event()
        runner = threading.Thread(target=Dispatcher(cfg, db).run, args=(stop,))
        started = time.monotonic()
        runner.start()
        try:
            while time.monotonic() - started < 4:
                if all(
                    s == "delivered" for (k, d), s in states(db, job_id).items() if d == "export"
                ):
                    break
                time.sleep(0.1)
            elapsed = time.monotonic() - started
            current = states(db, job_id)
        finally:
            stop.set()
            runner.join(timeout=30)
    assert elapsed < 3.5, current
    assert current[("seg", "hang")] == "in_progress"


def test_backoff_is_exponential_capped_and_jittered() -> None:
    import random

    rng = random.Random(1)
    assert backoff_delay(1, 2, 600, 0, rng) == 2
    assert backoff_delay(4, 2, 600, 0, rng) == 16
    assert backoff_delay(30, 2, 600, 0, rng) == 600
    jittered = {round(backoff_delay(3, 2, 600, 0.2, rng), 3) for _ in range(20)}
    assert len(jittered) > 10 and all(6.4 <= d <= 9.6 for d in jittered)


@pytest.mark.integration
def test_unreachable_dicom_peer_fails_after_max_attempts(
    db: Database, settings: Settings, results: dict[ArtifactKind, MadeObject], storescp: StoreScp
) -> None:
    down = {
        "name": "pacs",
        "kind": "dicom",
        "ae_title": "STORESCP",
        "host": "127.0.0.1",
        "port": free_port(),
    }
    cfg = with_destinations(settings, [down], max_attempts=2, backoff_base_s=0, timeout_s=3)
    job_id = add_job_with_artifacts(db, cfg, results)
    plan(db, job_id, ["pacs"])
    dispatcher = Dispatcher(cfg, db)
    dispatcher.run_once()
    dispatcher.run_once()
    current = states(db, job_id)
    assert current[("seg", "pacs")] == "failed" and current[("sr", "pacs")] == "pending"
    with db.read() as session:
        failed = [d for d in repo.for_job(session, job_id) if d.state == DeliveryState.FAILED.value]
        assert all("unreachable" in d.last_error for d in failed)


@pytest.mark.slow
@pytest.mark.integration
def test_orthanc_down_then_back_gets_every_object_exactly_once(
    db: Database,
    settings: Settings,
    results: dict[ArtifactKind, MadeObject],
    orthanc: OrthancProcess,
) -> None:
    dest = {
        "name": "orthanc",
        "kind": "dicom",
        "ae_title": orthanc.aet,
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
    }
    cfg = with_destinations(settings, [dest], backoff_base_s=0, jitter=0, timeout_s=3)
    job_id = add_job_with_artifacts(db, cfg, results)
    plan(db, job_id, ["orthanc"])
    orthanc.stop()
    dispatcher = Dispatcher(cfg, db)
    assert dispatcher.run_once() == 0
    assert set(states(db, job_id).values()) == {"pending"}
    orthanc.start()
    assert dispatcher.run_once() == 4  # SEG, overlay, PDF, then the SR in the same association
    assert dispatcher.run_once() == 0
    study_uid = str(
        dcmread(results[ArtifactKind.SEG].path, stop_before_pixels=True).StudyInstanceUID
    )
    stored = orthanc.sop_uids_of_study(study_uid)
    assert sorted(stored) == sorted(r.sop_instance_uid for r in results.values())
    with db.read() as session:
        delivered = Counter(e.entity_id for e in audit.query(session, action="delivery.delivered"))
    assert len(delivered) == 4 and set(delivered.values()) == {1}


def test_a_crashing_sender_is_recorded_as_a_failed_attempt(
    db: Database,
    settings: Settings,
    tmp_path: Path,
    results: dict[ArtifactKind, MadeObject],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = with_destinations(settings, [folder(tmp_path)], backoff_base_s=60)
    job_id = add_job_with_artifacts(db, cfg, results)
    plan(db, job_id, ["export"])

    def explode(self: object, paths: object) -> None:
        raise RuntimeError("bug in a sender")

    monkeypatch.setattr("node.dispatch.folder.FolderSender.send", explode)
    assert Dispatcher(cfg, db).run_once() == 0
    current = states(db, job_id)
    assert current[("seg", "export")] == "pending"  # back in the queue, not stuck in progress
    assert "sender crashed" in row(db, job_id, "seg")[2]
