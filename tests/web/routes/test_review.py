"""The review page over a real MR series and a real SEG; approve/reject/comment; dispatch release."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from node.db.orm import Artifact, AuditEvent, Delivery, Review
from node.dispatch.dispatcher import Dispatcher
from tests.web.conftest import Console, csrf_of
from tests.web.processed import LESION_SLICES, ProcessedStudy, build_processed_study


def _png(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def test_review_page_shows_result_and_slices(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    client = console.login("viewer1")
    page = client.get(f"/review/{study.job_id}")
    assert page.status_code == 200
    assert 'id="frame-slider"' in page.text and f'max="{study.frame_count - 1}"' in page.text
    assert 'id="opacity-slider"' in page.text and "lesion" in page.text and "0.870" in page.text
    assert "Moderate" in page.text and 'class="det-box"' in page.text
    # one conclusion, and where the finding is by the scanner's numbers (issue 17)
    assert "1 finding (most severe: Moderate)" in page.text
    first, last = (int(n) for n in re.search(r"<td>(\d+)-(\d+)</td>", page.text).groups())
    assert abs(last - first) == 3  # the lesion's four slices, by InstanceNumber
    assert "image " in page.text and "series " in page.text  # its key image, named
    assert 'id="approve"' not in page.text  # viewers are read-only
    # the MR's mean intensity in words, not the UCUM code the SR keeps (issue 17)
    assert "arbitrary units" in page.text and "[arb&#39;U]" not in page.text
    assert "[arb'U]" not in page.text


def test_frames_and_masks_render_as_png(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    client = console.login("viewer1")
    frame = client.get(f"/review/{study.job_id}/frames/{LESION_SLICES[1]}.png")
    assert frame.status_code == 200 and frame.headers["content-type"] == "image/png"
    pixels = _png(frame.content)
    assert pixels.shape == (256, 256) and pixels.std() > 10  # a real image, not a blank
    lesion = _png(client.get(f"/review/{study.job_id}/masks/{LESION_SLICES[1]}.png").content)
    empty = _png(client.get(f"/review/{study.job_id}/masks/0.png").content)
    assert lesion.shape == (256, 256, 4)
    assert (lesion[..., 3] > 0).sum() > 100 and (empty[..., 3] > 0).sum() == 0
    assert client.get(f"/review/{study.job_id}/frames/{study.frame_count}.png").status_code == 404


def test_approve_releases_held_delivery_which_is_then_sent(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    viewer = console.login("viewer1")
    token = csrf_of(viewer, f"/review/{study.job_id}")
    assert (
        viewer.post(f"/review/{study.job_id}/approve", data={"csrf_token": token}).status_code
        == 403
    )
    client = console.login("radiologist1")
    token = csrf_of(client, f"/review/{study.job_id}")
    response = client.post(f"/review/{study.job_id}/approve", data={"csrf_token": token})
    assert response.status_code == 303
    with console.db.read() as session:
        assert [d.state for d in session.query(Delivery).all()] == ["pending"]
        assert [r.decision for r in session.query(Review).all()] == ["approved"]
        actions = {e.action for e in session.query(AuditEvent).all()}
        assert {"review.approved", "delivery.released"} <= actions
    assert Dispatcher(console.settings, console.db).run_once() == 1
    with console.db.read() as session:
        assert [d.state for d in session.query(Delivery).all()] == ["delivered"]
    archive = Path(console.settings.destination("archive").path or "")
    assert len(list(archive.rglob("*.dcm"))) == 1
    again = client.post(f"/review/{study.job_id}/approve", data={"csrf_token": token})
    assert again.status_code == 409


def test_a_review_page_left_open_on_a_deleted_study_approves_nothing_later(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    """The admin deletes a study (sent for the wrong patient) while its review page is open; the
    next study takes new numbers, so the stale page's "approve" finds nothing (404) instead of
    approving the next patient's job, and its results, SEG and delivery are untouched."""
    console, study = processed
    radiologist = console.login("radiologist1")
    stale = csrf_of(radiologist, f"/review/{study.job_id}")
    admin = console.login("admin1")
    csrf = csrf_of(admin, f"/studies/{study.study_uid}")
    deleted = admin.post(
        f"/studies/{study.study_uid}/delete", data={"csrf_token": csrf, "confirm": "yes"}
    )
    assert deleted.status_code == 303
    with console.db.read() as session:  # the SEG and its delivery went with the study
        assert session.query(Artifact).count() == session.query(Delivery).count() == 0
    again = build_processed_study(console.settings, console.db)  # the next study arrives
    assert again.job_id > study.job_id
    assert again.artifact_id > study.artifact_id and again.delivery_id > study.delivery_id
    response = radiologist.post(f"/review/{study.job_id}/approve", data={"csrf_token": stale})
    assert response.status_code == 404
    with console.db.read() as session:
        assert [d.state for d in session.query(Delivery).all()] == ["held"]
        assert session.query(Review).count() == 0
    assert radiologist.get(f"/artifacts/{study.artifact_id}/download").status_code == 404
    assert not console.settings.job_results_dir(study.job_id).exists()


def test_reject_needs_a_reason_and_cancels_delivery(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    client = console.login("radiologist1")
    token = csrf_of(client, f"/review/{study.job_id}")
    no_reason = client.post(
        f"/review/{study.job_id}/reject", data={"csrf_token": token, "reason": " "}
    )
    assert no_reason.status_code == 400 and "reason" in no_reason.text
    response = client.post(
        f"/review/{study.job_id}/reject", data={"csrf_token": token, "reason": "boundary wrong"}
    )
    assert response.status_code == 303
    page = client.get(f"/review/{study.job_id}").text
    assert "Rejected; 1 unsent delivery(ies) cancelled." in page
    assert 'id="reject"' not in page and 'id="approve"' not in page  # nothing left to decide
    assert "<b>radiologist1</b> rejected boundary wrong" in page
    comment = client.post(
        f"/review/{study.job_id}/comment", data={"csrf_token": token, "text": "see prior"}
    )
    assert comment.status_code == 303
    with console.db.read() as session:
        assert [d.state for d in session.query(Delivery).all()] == ["cancelled"]
        assert [(r.decision, r.reason) for r in session.query(Review).order_by(Review.id)] == [
            ("rejected", "boundary wrong"),
            ("comment", "see prior"),
        ]


def test_study_page_and_downloads(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    client = console.login("viewer1")
    page = client.get(f"/studies/{study.study_uid}")
    assert page.status_code == 200 and "demo-mr" in page.text and "archive: held" in page.text
    seg = client.get("/artifacts/1/download")
    assert seg.status_code == 200 and seg.content[128:132] == b"DICM"
    csv = client.get(f"/jobs/{study.job_id}/export/csv")
    assert csv.status_code == 200 and "lesion-1" in csv.text
    js = client.get(f"/jobs/{study.job_id}/export/json").json()
    assert js["classification"]["top_class"] == "lesion"
    masks = client.get(f"/jobs/{study.job_id}/export/masks")
    assert masks.status_code == 200 and masks.content[:2] == b"PK"
    assert client.get(f"/jobs/{study.job_id}/export/nope").status_code == 404
    with console.db.read() as session:
        downloads = session.query(AuditEvent).filter_by(action="result.download").count()
    assert downloads == 4


def test_export_of_a_result_no_longer_on_disk_is_404(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    """One export implementation: with the result files gone there is no second, different file."""
    console, study = processed
    client = console.login("viewer1")
    shutil.rmtree(study.seg_path.parent)
    for which in ("csv", "json", "masks", "pdfs"):
        response = client.get(f"/jobs/{study.job_id}/export/{which}")
        assert response.status_code == 404 and "no longer on disk" in response.text
    page = client.get(f"/review/{study.job_id}")  # the review page falls back to the job summary
    assert page.status_code == 200


def test_rerun_and_resend(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    client = console.login("radiologist1")
    token = csrf_of(client, f"/review/{study.job_id}")
    held = client.post("/deliveries/1/resend", data={"csrf_token": token})
    assert held.status_code == 409 and "only a failed delivery" in held.text
    with console.db.write() as session:
        session.get(Delivery, 1).state = "failed"  # type: ignore[union-attr]
    page = client.get(f"/review/{study.job_id}").text
    assert 'action="/deliveries/1/resend"' in page and 'id="rerun"' in page
    assert client.post("/deliveries/1/resend", data={"csrf_token": token}).status_code == 303
    assert client.post(f"/jobs/{study.job_id}/rerun", data={"csrf_token": token}).status_code == 303
    again = client.post(f"/jobs/{study.job_id}/rerun", data={"csrf_token": token})
    assert again.status_code == 409
    with console.db.read() as session:
        assert session.get(Delivery, 1).state == "pending"  # type: ignore[union-attr]
        actions = [e.action for e in session.query(AuditEvent).order_by(AuditEvent.id)]
    assert "delivery.resent" in actions and "job.requeued" in actions


def test_approve_and_dispatch_on_both_backends(settings, db, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from tests.web.conftest import make_console, with_archive
    from tests.web.processed import MR_SERIES, build_processed_study

    if not MR_SERIES.is_dir():
        pytest.skip(f"sample data missing: {MR_SERIES}")
    full = with_archive(settings, tmp_path / "archive")
    study = build_processed_study(full, db)
    console = make_console(full, db)
    client = console.login("admin1")
    token = csrf_of(client, f"/review/{study.job_id}")
    assert (
        client.post(f"/review/{study.job_id}/approve", data={"csrf_token": token}).status_code
        == 303
    )
    assert Dispatcher(full, db).run_once() == 1
    assert "archive: delivered" in client.get(f"/studies/{study.study_uid}").text


def test_reject_after_delivery_withdraws_it_and_says_so(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    client = console.login("radiologist1")
    token = csrf_of(client, f"/review/{study.job_id}")
    before = client.get(f"/review/{study.job_id}").text
    assert "Rejecting cancels 1 delivery(ies) not yet sent." in before
    client.post(f"/review/{study.job_id}/approve", data={"csrf_token": token})
    assert Dispatcher(console.settings, console.db).run_once() == 1
    page = client.get(f"/review/{study.job_id}").text
    assert 'id="approve"' not in page  # approving again would change nothing
    assert "results already reached archive (1 objects)" in page
    assert "rejection note" in page
    response = client.post(
        f"/review/{study.job_id}/reject", data={"csrf_token": token, "reason": "wrong patient"}
    )
    assert response.status_code == 303
    after = client.get(f"/review/{study.job_id}").text
    assert "archive (1 objects): a rejection note is being sent there" in after
    assert "REJECTION NOTE → archive: pending" in after
    assert "<b>radiologist1</b> approved" in after and "<b>radiologist1</b> rejected" in after
    assert Dispatcher(console.settings, console.db).run_once() == 1
    archive = Path(console.settings.destination("archive").path or "")
    notes = [p for p in archive.rglob("*.dcm") if pydicom.dcmread(p).Modality == "KO"]
    assert len(notes) == 1
    with console.db.write() as session:  # a failed result delivery of a rejected job: no resend
        delivery = session.query(Delivery).order_by(Delivery.id).first()
        assert delivery is not None
        delivery.state = "failed"
        delivery_id = delivery.id
    assert (
        f'action="/deliveries/{delivery_id}/resend"'
        not in client.get(f"/review/{study.job_id}").text
    )
    resend = client.post(f"/deliveries/{delivery_id}/resend", data={"csrf_token": token})
    assert resend.status_code == 409 and "rejected" in resend.text
