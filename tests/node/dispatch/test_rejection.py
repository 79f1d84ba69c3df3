"""Reject that means it: unsent deliveries cancelled, delivered results withdrawn by an IOCM note.

The note goes through the real dispatcher to a real DCMTK storescp (and a real Orthanc), and the
object the peer stored is checked: KOS, title (113037, DCM), references = exactly what was stored.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from core.config import Settings
from core.domain import ArtifactKind, DeliveryState, ReviewState
from node.db.engine import Database
from node.db.orm import Job, utcnow
from node.db.repositories import deliveries as repo
from node.dispatch.delivery_plan import plan_deliveries, resend
from node.dispatch.dispatcher import Dispatcher
from node.dispatch.rejection import plan_rejection_notes, preview_rejection, reject_job
from node.results.rejection import evidence_uids, referenced_uids
from tests.node.dispatch.conftest import StoreScp, add_job_with_artifacts, with_destinations
from tests.node.dispatch.factory import MadeObject
from tests.orthanc.harness import OrthancProcess

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


def _plan(db: Database, job_id: int, destinations: list[str], held: bool = False) -> None:
    with db.write() as session:
        plan_deliveries(session, session.get_one(Job, job_id), destinations, held=held)


def _reject(db: Database, cfg: Settings, job_id: int) -> tuple[int, dict[str, int]]:
    with db.write() as session:
        job = session.get_one(Job, job_id)
        job.review_state = ReviewState.REJECTED.value
        outcome = reject_job(session, cfg, job, "dr.cuddy", "wrong patient")
        return outcome.cancelled, outcome.notes


def _states(db: Database, job_id: int) -> dict[tuple[str, str], str]:
    with db.read() as session:
        return {
            (d.artifact.kind, d.destination_name): d.state for d in repo.for_job(session, job_id)
        }


def _stored_notes(folder: Path) -> list[Dataset]:
    return [
        ds
        for ds in (dcmread(p) for p in folder.rglob("*") if p.is_file())
        if ds.SOPClassUID == KOS_SOP_CLASS
    ]


def _assert_rejection_note(note: Dataset, expected: set[str]) -> None:
    assert note.Modality == "KO"
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113037",
        "DCM",
        "Rejected for Patient Safety Reasons",
    )
    assert referenced_uids(note) == expected
    assert evidence_uids(note) == expected


def test_reject_cancels_every_unsent_delivery_and_results_cannot_be_resent(
    db: Database, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    cfg = with_destinations(
        settings,
        [
            {"name": "a", "kind": "folder", "path": str(tmp_path / "a")},
            {"name": "b", "kind": "folder", "path": str(tmp_path / "b")},
        ],
    )
    job_id = add_job_with_artifacts(db, cfg, results)
    _plan(db, job_id, ["a"])
    _plan(db, job_id, ["b"], held=True)
    with db.write() as session:  # one of each unsent state: retrying, failed, in flight, held
        rows = {(d.artifact.kind, d.destination_name): d for d in repo.for_job(session, job_id)}
        rows[("seg", "a")].attempts = 2
        rows[("overlay", "a")].state = DeliveryState.FAILED.value
        rows[("pdf", "a")].state = DeliveryState.IN_PROGRESS.value
        failed_id = rows[("overlay", "a")].id
        assert preview_rejection(session, session.get_one(Job, job_id)).unsent == 8
    assert _reject(db, cfg, job_id) == (8, {})  # nothing was delivered: no note
    assert set(_states(db, job_id).values()) == {"cancelled"}
    assert Dispatcher(cfg, db).run_once() == 0
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with db.write() as session:  # even a result delivery that is FAILED again stays unsendable
        repo.get(session, failed_id).state = DeliveryState.FAILED.value  # type: ignore[union-attr]
    with db.write() as session, pytest.raises(ValueError, match="rejected"):
        resend(session, failed_id, actor="admin")


def test_reject_after_delivery_sends_storescp_a_note_of_exactly_what_it_stored(
    db: Database,
    settings: Settings,
    tmp_path: Path,
    storescp: StoreScp,
    results: dict[ArtifactKind, MadeObject],
) -> None:
    cfg = with_destinations(
        settings,
        [
            {
                "name": "pacs",
                "kind": "dicom",
                "ae_title": storescp.ae_title,
                "host": "127.0.0.1",
                "port": storescp.port,
            },
            {"name": "archive", "kind": "folder", "path": str(tmp_path / "archive")},
        ],
        max_attempts=5,
        backoff_base_s=600,
        jitter=0,
    )
    job_id = add_job_with_artifacts(db, cfg, results)
    results[ArtifactKind.SR].path.write_bytes(b"corrupt")  # the SR fails and waits to retry
    _plan(db, job_id, ["pacs"])
    assert Dispatcher(cfg, db).run_once() == 3
    _plan(db, job_id, ["archive"], held=True)
    stored = set(storescp.received())
    expected = {
        results[k].sop_instance_uid
        for k in (ArtifactKind.SEG, ArtifactKind.OVERLAY, ArtifactKind.PDF)
    }
    assert stored == expected
    with db.read() as session:
        preview = preview_rejection(session, session.get_one(Job, job_id))
    assert (preview.unsent, preview.delivered) == (5, {"pacs": 3})

    cancelled, notes = _reject(db, cfg, job_id)
    assert (cancelled, notes) == (5, {"pacs": 3})  # SR retry to pacs + 4 held for archive
    assert Dispatcher(cfg, db).run_once() == 1  # the note, nothing else
    [note] = _stored_notes(storescp.folder)
    _assert_rejection_note(note, expected)
    assert note.StudyInstanceUID == dcmread(results[ArtifactKind.SEG].path).StudyInstanceUID
    assert _states(db, job_id)[("rejection_note", "pacs")] == "delivered"
    with db.write() as session:  # planning again withdraws nothing twice
        assert plan_rejection_notes(session, cfg, session.get_one(Job, job_id)) == {}
    if shutil.which("dciodvfy"):
        path = next(p for p in storescp.folder.rglob("*") if dcmread(p).Modality == "KO")
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        assert "Error" not in check.stdout + check.stderr, check.stdout + check.stderr


def test_a_send_in_flight_during_rejection_is_withdrawn_once_it_lands(
    db: Database, settings: Settings, tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    cfg = with_destinations(
        settings, [{"name": "archive", "kind": "folder", "path": str(tmp_path / "archive")}]
    )
    job_id = add_job_with_artifacts(db, cfg, results)
    _plan(db, job_id, ["archive"])
    dispatcher = Dispatcher(cfg, db)
    batches = dispatcher._claim(utcnow(), exclude=set())  # claimed: in flight
    assert _reject(db, cfg, job_id) == (4, {})
    assert dispatcher._deliver("archive", batches["archive"], timedelta(0)) == 4  # they landed
    states = _states(db, job_id)
    assert states.pop(("rejection_note", "archive")) == "pending"
    assert set(states.values()) == {"delivered"}
    assert dispatcher.run_once() == 1
    [note] = _stored_notes(tmp_path / "archive")
    _assert_rejection_note(note, {o.sop_instance_uid for o in results.values()})


@pytest.mark.integration
def test_orthanc_stores_the_rejection_note(
    db: Database,
    settings: Settings,
    orthanc: OrthancProcess,
    results: dict[ArtifactKind, MadeObject],
) -> None:
    cfg = with_destinations(settings, [{"name": "pacs", "kind": "orthanc", "url": orthanc.url}])
    job_id = add_job_with_artifacts(db, cfg, results)
    _plan(db, job_id, ["pacs"])
    assert Dispatcher(cfg, db).run_once() == 4
    assert _reject(db, cfg, job_id) == (0, {"pacs": 4})
    assert Dispatcher(cfg, db).run_once() == 1
    study_uid = str(dcmread(results[ArtifactKind.SEG].path).StudyInstanceUID)
    [kos] = [
        i["ID"]
        for i in orthanc.instances_of_study(study_uid)
        if orthanc.get(f"/instances/{i['ID']}/tags?simplify")["Modality"] == "KO"
    ]
    note = dcmread(io.BytesIO(httpx.get(f"{orthanc.url}/instances/{kos}/file").content))
    _assert_rejection_note(note, {o.sop_instance_uid for o in results.values()})
