"""Planning deliveries and the review gate, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings
from core.domain import ArtifactKind, DeliveryState, DestinationKind
from node.db.engine import Database
from node.db.orm import Job
from node.db.repositories import audit
from node.db.repositories import deliveries as repo
from node.dispatch.delivery_plan import (
    destination_settings,
    plan_deliveries,
    release_held,
    resend,
    resolve_sender_destination,
)
from tests.node.dispatch.conftest import add_job_with_artifacts, with_destinations
from tests.node.dispatch.factory import MadeObject


@pytest.fixture
def two_folders(settings: Settings, tmp_path: Path) -> Settings:
    return with_destinations(
        settings,
        [
            {"name": "a", "kind": "folder", "path": str(tmp_path / "a")},
            {"name": "b", "kind": "folder", "path": str(tmp_path / "b")},
        ],
    )


def test_one_delivery_per_object_and_destination_idempotent(
    db: Database, two_folders: Settings, results: dict[ArtifactKind, MadeObject]
) -> None:
    job_id = add_job_with_artifacts(db, two_folders, results)
    with db.write() as session:
        planned = plan_deliveries(
            session, session.get_one(Job, job_id), ["a", "b", "a"], held=False
        )
    assert len(planned) == 8
    assert {d.state for d in planned} == {DeliveryState.PENDING.value}
    assert [ArtifactKind(d.artifact.kind) for d in planned[::2]] == list(results)  # dispatch order
    with db.write() as session:
        again = plan_deliveries(session, session.get_one(Job, job_id), ["a", "b"], held=False)
    assert sorted(d.id for d in again) == sorted(d.id for d in planned)
    with db.read() as session:
        assert len(audit.query(session, action="delivery.planned")) == 8


def test_held_deliveries_are_released_or_cancelled_by_review(
    db: Database, two_folders: Settings, results: dict[ArtifactKind, MadeObject]
) -> None:
    job_id = add_job_with_artifacts(db, two_folders, results)
    with db.write() as session:
        job = session.get_one(Job, job_id)
        planned = plan_deliveries(session, job, ["a"], held=True)
        assert {d.state for d in planned} == {DeliveryState.HELD.value}
    with db.write() as session:
        assert release_held(session, session.get_one(Job, job_id), actor="dr.house") == 4
    with db.read() as session:
        states = {d.state for d in repo.for_job(session, job_id)}
        released = [e.actor for e in audit.query(session, action="delivery.released")]
    assert states == {DeliveryState.PENDING.value}
    assert released == ["dr.house"] * 4


def test_resend_only_from_failed(
    db: Database, two_folders: Settings, results: dict[ArtifactKind, MadeObject]
) -> None:
    job_id = add_job_with_artifacts(db, two_folders, results)
    with db.write() as session:
        delivery = plan_deliveries(session, session.get_one(Job, job_id), ["a"], held=False)[0]
        delivery_id = delivery.id
    with db.write() as session, pytest.raises(ValueError, match="only a failed delivery"):
        resend(session, delivery_id, actor="admin")
    with db.write() as session, pytest.raises(LookupError):
        resend(session, 999999, actor="admin")
    with db.write() as session:
        row = repo.get(session, delivery_id)
        assert row is not None
        row.state, row.attempts, row.last_error = DeliveryState.FAILED.value, 8, "peer down"
    with db.write() as session:
        resend(session, delivery_id, actor="admin")
    with db.read() as session:
        row = repo.get(session, delivery_id)
        assert row is not None and row.state == "pending" and row.attempts == 0
        assert audit.query(session, action="delivery.resent")[0].actor == "admin"


def test_send_back_to_sender_resolves_by_ae_title_then_host(settings: Settings) -> None:
    configured = with_destinations(
        settings,
        [
            {
                "name": "ct-east",
                "kind": "dicom",
                "ae_title": "CT1",
                "host": "10.0.0.1",
                "port": 104,
            },
            {
                "name": "ct-west",
                "kind": "dicom",
                "ae_title": "CT1",
                "host": "10.0.0.2",
                "port": 104,
            },
            {"name": "orthanc", "kind": "orthanc", "url": "http://127.0.0.1:8042/"},
        ],
    )
    assert resolve_sender_destination(configured, "CT1", "10.0.0.2") == "ct-west"
    assert resolve_sender_destination(configured, "CT1", "192.168.1.1") == "ct-east"
    assert resolve_sender_destination(configured, "NOBODY", "10.0.0.1") is None
    assert resolve_sender_destination(configured, "", "http://127.0.0.1:8042") == "orthanc"


def test_results_of_an_orthanc_study_go_back_to_that_orthanc(
    db: Database, settings: Settings, results: dict[ArtifactKind, MadeObject]
) -> None:
    configured = with_destinations(settings, [], orthanc_sources=[{"url": "http://127.0.0.1:8042"}])
    job_id = add_job_with_artifacts(
        db, configured, results, source="orthanc", peer_host="http://127.0.0.1:8042"
    )
    with db.write() as session:
        planned = plan_deliveries(
            session, session.get_one(Job, job_id), [], held=False, settings=configured
        )
    assert {d.destination_name for d in planned} == {"orthanc-source-1"}
    dest = destination_settings(configured, "orthanc-source-1")
    assert (
        dest is not None
        and dest.kind is DestinationKind.ORTHANC
        and dest.url == "http://127.0.0.1:8042"
    )
