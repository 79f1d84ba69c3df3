"""The jobs page: the queue with its filters, the live-refresh fragment and every action."""

from __future__ import annotations

from node.db.orm import AuditEvent, Delivery, Job
from tests.web.conftest import Console, csrf_of
from tests.web.processed import ProcessedStudy


def _actions(console: Console, entity_id: int, action: str) -> int:
    with console.db.read() as session:
        return (
            session.query(AuditEvent)
            .filter(AuditEvent.action == action, AuditEvent.entity_id == str(entity_id))
            .count()
        )


def _job(console: Console, job_id: int) -> Job:
    with console.db.read() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def _add_job(console: Console, study: ProcessedStudy, **fields: object) -> int:
    with console.db.write() as session:
        source = session.get(Job, study.job_id)
        assert source is not None
        job = Job(study_pk=source.study_pk, **fields)
        session.add(job)
        session.flush()
        return job.id


def test_queue_shows_state_worker_attempt_duration_error(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    failed = _add_job(
        console, study, pipeline_name="demo-3d", result_version=2, state="failed",
        attempts=3, lease_owner="gpu-host:4242", duration_s=12.5, error="CUDA out of memory",
    )  # fmt: skip
    client = console.login("radiologist1")
    page = client.get("/jobs")
    assert page.status_code == 200
    assert "gpu-host:4242" in page.text and "CUDA out of memory" in page.text
    assert "3/3" in page.text and "12.5 s" in page.text and "1.2 s" in page.text
    only_failed = client.get("/jobs?state=failed").text
    assert f'data-job="{failed}"' in only_failed and f'data-job="{study.job_id}"' not in only_failed
    only_mr = client.get("/jobs/rows?pipeline=demo-mr").text
    assert f'data-job="{study.job_id}"' in only_mr and f'data-job="{failed}"' not in only_mr
    assert "<html" not in only_mr  # the fragment the page's script swaps in
    counts = client.get("/jobs/rows").headers["x-live-counts"]
    assert counts == "queued=0,running=0,succeeded=1,failed=1,awaiting=1"
    assert client.get("/jobs?state=bogus").status_code == 400
    assert client.get("/jobs").headers["content-security-policy"].count("unsafe-inline") == 0


def test_retry_and_cancel(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    client = console.login("radiologist1")
    csrf = csrf_of(client, "/jobs")
    response = client.post(
        f"/jobs/{study.job_id}/retry",
        data={"csrf_token": csrf, "back_state": "queued", "back_pipeline": ""},
    )
    assert response.status_code == 303 and response.headers["location"] == "/jobs?state=queued"
    assert _job(console, study.job_id).state == "queued"
    assert _actions(console, study.job_id, "job.requeued") == 1
    # a queued job cannot be retried, but it can be cancelled, once
    assert client.post(f"/jobs/{study.job_id}/retry", data={"csrf_token": csrf}).status_code == 409
    assert client.post(f"/jobs/{study.job_id}/cancel", data={"csrf_token": csrf}).status_code == 303
    job = _job(console, study.job_id)
    assert job.state == "failed" and job.error == "cancelled by radiologist1"
    assert _actions(console, study.job_id, "job.cancelled") == 1
    assert client.post(f"/jobs/{study.job_id}/cancel", data={"csrf_token": csrf}).status_code == 409
    # a running job is a worker's: no cancel
    running = _add_job(console, study, pipeline_name="demo-3d", state="running")
    assert client.post(f"/jobs/{running}/cancel", data={"csrf_token": csrf}).status_code == 409
    assert _job(console, running).state == "running"
    # no CSRF token, no action
    assert client.post(f"/jobs/{study.job_id}/retry").status_code == 403


def test_rerun_with_another_pipeline(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    client = console.login("admin1")
    csrf = csrf_of(client, "/jobs")
    assert 'value="demo-3d"' in client.get("/jobs").text  # offered from the definitions
    response = client.post(
        f"/jobs/{study.job_id}/rerun-with", data={"csrf_token": csrf, "pipeline": "demo-3d"}
    )
    assert response.status_code == 303, response.text
    with console.db.read() as session:
        new = session.query(Job).filter(Job.pipeline_name == "demo-3d").one()
        assert new.state == "queued" and new.destinations == ["archive"]
        new_id = new.id
    assert _actions(console, new_id, "job.created") == 1
    again = {"csrf_token": csrf, "pipeline": "demo-3d"}
    assert client.post(f"/jobs/{study.job_id}/rerun-with", data=again).status_code == 409
    unknown = {"csrf_token": csrf, "pipeline": "no-such-pipeline"}
    assert client.post(f"/jobs/{study.job_id}/rerun-with", data=unknown).status_code == 404


def test_resend_all_failed_deliveries(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    with console.db.write() as session:
        delivery = session.query(Delivery).one()
        delivery.state, delivery.attempts = "failed", 5
        delivery_id = delivery.id
    client = console.login("radiologist1")
    assert "Resend all failed deliveries (1)" in client.get("/jobs").text
    csrf = csrf_of(client, "/jobs")
    assert client.post("/deliveries/resend-failed", data={"csrf_token": csrf}).status_code == 303
    with console.db.read() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None and delivery.state == "pending" and delivery.attempts == 0
    assert _actions(console, delivery_id, "delivery.resent") == 1
    assert "Resend all failed deliveries (0)" in client.get("/jobs").text


def test_viewer_has_no_jobs_page(processed: tuple[Console, ProcessedStudy]) -> None:
    console, _ = processed
    client = console.login("viewer1")
    assert client.get("/jobs").status_code == 403
    assert 'href="/jobs"' not in client.get("/").text
