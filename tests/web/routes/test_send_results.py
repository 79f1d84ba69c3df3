"""The study page's "send to": a job's validated results planned to a chosen destination and
delivered by a real dispatcher to a real storescp and folder; every refusal (400/409) and who may."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import Settings
from core.domain import ArtifactKind
from node.db.engine import Database
from node.db.orm import Artifact, Delivery, Job
from node.db.repositories import audit
from node.dispatch.dispatcher import Dispatcher
from tests.conftest import free_port
from tests.node.dispatch.conftest import (
    StoreScp,
    add_job_with_artifacts,
    start_storescp,
    with_destinations,
)
from tests.node.dispatch.factory import make_results
from tests.web.conftest import csrf_of, make_console


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[StoreScp]:
    """A real DCMTK storescp on a free loopback port."""
    if shutil.which("storescp") is None:
        pytest.skip("DCMTK storescp not installed")
    scp = StoreScp("STORESCP", free_port(), tmp_path / "storescp")
    scp.process = start_storescp(scp.folder, scp.port)
    yield scp
    scp.process.terminate()
    scp.process.wait(timeout=10)


def _settings(settings: Settings, tmp_path: Path, peer_port: int) -> Settings:
    return with_destinations(
        settings,
        [
            {"name": "archive", "kind": "folder", "path": str(tmp_path / "archive")},
            {"name": "pacs", "kind": "dicom", "ae_title": "STORESCP", "host": "127.0.0.1",
             "port": peer_port},
            {"name": "off", "kind": "folder", "path": str(tmp_path / "off"), "enabled": False},
        ],
        timeout_s=5.0,
    )  # fmt: skip


def _deliveries(db: Database, job_id: int, destination: str) -> list[str]:
    with db.read() as session:
        rows = (
            session.query(Delivery)
            .join(Artifact, Delivery.artifact_pk == Artifact.id)
            .filter(Artifact.job_pk == job_id, Delivery.destination_name == destination)
            .all()
        )
        return sorted(d.state for d in rows)


def _study_uid(db: Database, job_id: int) -> str:
    with db.read() as session:
        return session.get_one(Job, job_id).study.study_instance_uid


def test_send_to_delivers_the_results_to_storescp_and_a_folder(
    settings: Settings, sqlite_db: Database, tmp_path: Path, peer: StoreScp
) -> None:
    cfg = _settings(settings, tmp_path, peer.port)
    console = make_console(cfg, sqlite_db)
    made = make_results(tmp_path / "made")
    job_id = add_job_with_artifacts(sqlite_db, cfg, made)
    client = console.login("radiologist1")
    page = client.get(f"/studies/{_study_uid(sqlite_db, job_id)}").text
    form = page.split(f'id="send-{job_id}"')[1].split("</form>")[0]
    assert '<option value="pacs">' in form and '<option value="archive">' in form
    assert 'value="off"' not in form  # a switched-off destination is not offered
    token = csrf_of(client, "/jobs")

    answer = client.post(f"/jobs/{job_id}/send", data={"csrf_token": token, "destination": "pacs"})
    assert answer.status_code == 303, answer.text
    assert _deliveries(sqlite_db, job_id, "pacs") == ["pending"] * 4
    dispatcher = Dispatcher(cfg, sqlite_db)
    assert dispatcher.run_once() == 4
    assert _deliveries(sqlite_db, job_id, "pacs") == ["delivered"] * 4
    assert set(peer.received()) == {obj.sop_instance_uid for obj in made.values()}

    answer = client.post(
        f"/jobs/{job_id}/send", data={"csrf_token": token, "destination": "archive"}
    )
    assert answer.status_code == 303
    assert dispatcher.run_once() == 4
    written = [p for p in (tmp_path / "archive").rglob("*") if p.is_file()]
    assert len(written) == 4

    # sending again to a destination that has them sends them again (the PACS lost them)
    again = client.post(f"/jobs/{job_id}/send", data={"csrf_token": token, "destination": "pacs"})
    assert again.status_code == 303
    assert _deliveries(sqlite_db, job_id, "pacs") == ["pending"] * 4
    with sqlite_db.read() as session:
        sent = [(e.actor, e.detail) for e in audit.query(session, action="delivery.sent_manually")]
        assert len(audit.query(session, action="delivery.sent_again")) == 4
    assert ("radiologist1", "4 object(s) -> pacs") in sent
    assert ("radiologist1", "4 object(s) -> archive") in sent


def test_send_to_refusals(settings: Settings, sqlite_db: Database, tmp_path: Path) -> None:
    cfg = _settings(settings, tmp_path, 104)
    console = make_console(cfg, sqlite_db)
    job_id = add_job_with_artifacts(sqlite_db, cfg, make_results(tmp_path / "a"))
    unvalidated = add_job_with_artifacts(
        sqlite_db, cfg, make_results(tmp_path / "b"), validated=False
    )
    admin = console.login("admin1")
    token = csrf_of(admin, "/jobs")

    def send(job: int, destination: str = "archive") -> tuple[int, str]:
        answer = admin.post(
            f"/jobs/{job}/send", data={"csrf_token": token, "destination": destination}
        )
        return answer.status_code, answer.text

    assert send(job_id, "nowhere")[0] == 400
    status, text = send(job_id, "off")
    assert status == 400 and "switched off" in text
    assert send(999)[0] == 404
    status, text = send(unvalidated)
    assert status == 409 and "no validated results" in text
    for fields, words in [
        ({"review_state": "pending"}, "awaits review"),
        ({"review_state": "rejected"}, "was rejected"),
        ({"state": "failed", "review_state": "not_required"}, "is failed"),
    ]:
        with sqlite_db.write() as session:
            job = session.get_one(Job, job_id)
            for key, value in fields.items():
                setattr(job, key, value)
        status, text = send(job_id)
        assert status == 409 and words in text, text
    assert _deliveries(sqlite_db, job_id, "archive") == []
    # a pending review shows no form on the study page
    assert f'id="send-{job_id}"' not in admin.get(f"/studies/{_study_uid(sqlite_db, job_id)}").text
    # viewers may not send; nobody may without the form's CSRF token
    viewer = console.login("viewer1")
    viewer_token = csrf_of(viewer, "/account")
    forbidden = viewer.post(
        f"/jobs/{job_id}/send", data={"csrf_token": viewer_token, "destination": "archive"}
    )
    assert forbidden.status_code == 403
    assert admin.post(f"/jobs/{job_id}/send", data={"destination": "archive"}).status_code == 403


def test_a_rejection_note_is_never_sent_by_hand(
    settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    """Only results go: a note withdrawing objects is the rejection's, not the console's."""
    cfg = _settings(settings, tmp_path, 104)
    console = make_console(cfg, sqlite_db)
    made = make_results(tmp_path / "a")
    job_id = add_job_with_artifacts(sqlite_db, cfg, {ArtifactKind.SEG: made[ArtifactKind.SEG]})
    with sqlite_db.write() as session:
        note = ArtifactKind.REJECTION_NOTE.value
        session.add(
            Artifact(
                job_pk=job_id, kind=note, sop_instance_uid="1.2.3.4", path="/x", validated=True
            )
        )
    admin = console.login("admin1")
    token = csrf_of(admin, "/jobs")
    answer = admin.post(
        f"/jobs/{job_id}/send", data={"csrf_token": token, "destination": "archive"}
    )
    assert answer.status_code == 303
    assert _deliveries(sqlite_db, job_id, "archive") == ["pending"]
