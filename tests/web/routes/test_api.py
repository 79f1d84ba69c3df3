"""The JSON API with scoped bearer tokens: health, studies, results, jobs, stats."""

from __future__ import annotations

from node.db.orm import utcnow
from node.db.repositories import users as user_repo
from node.db.repositories import workers
from tests.web.conftest import Console
from tests.web.processed import ProcessedStudy


def _token(console: Console, username: str, scopes: list[str]) -> dict[str, str]:
    with console.db.write() as session:
        user = user_repo.get_by_username(session, username)
        assert user is not None
        user_repo.create_api_token(
            session, user, "test", f"tok-{username}-{'-'.join(scopes)}", scopes
        )
    return {"Authorization": f"Bearer tok-{username}-{'-'.join(scopes)}"}


def test_health_is_open_and_reports_database_and_listener(console: Console) -> None:
    body = console.client().get("/api/health").json()
    assert body["database"] == "ok" and body["listener"] == "not reachable"  # no receiver here
    # no worker runs in this test either: the demo pipelines' queue has nobody to run its jobs
    assert body["status"] == "degraded" and body["problems"] == ["queue cpu has no worker"]
    with console.db.write() as session:
        workers.beat(
            session,
            name="w1@hostA",
            host="hostA",
            engine="local",
            queues=["cpu"],
            devices=["cpu"],
            pid=1,
            now=utcnow(),
        )
    body = console.client().get("/api/health").json()
    assert body["status"] == "ok" and body["problems"] == []
    assert body["queues"] == [
        {"name": "cpu", "serves": "pipelines demo-2d, demo-3d", "workers": ["w1@hostA"], "ok": True}
    ]


def test_bearer_token_reads_studies_and_results(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    client = console.client()
    headers = _token(console, "viewer1", ["read"])
    page = client.get("/api/studies", headers=headers).json()
    assert page["total"] == 1 and page["items"][0]["study_instance_uid"] == study.study_uid
    results = client.get(f"/api/studies/{study.study_uid}/results", headers=headers).json()
    job = results["jobs"][0]
    assert job["job"]["review_state"] == "pending"
    assert job["artifacts"][0]["deliveries"] == {"archive": "held"}
    assert job["result"]["classification"]["top_class"] == "lesion"
    jobs = client.get("/api/jobs?state=succeeded", headers=headers).json()
    assert [j["id"] for j in jobs] == [study.job_id]
    stats = client.get("/api/stats", headers=headers).json()
    assert stats["class_distribution"] == [{"label": "lesion", "count": 1}]
    assert {"label": "0.8-0.9", "count": 1} in stats["confidence_histogram"]
    assert client.get("/api/studies/1.2.3/results", headers=headers).status_code == 404


def test_bad_revoked_and_unscoped_tokens_are_refused(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, _ = processed
    client = console.client()
    assert client.get("/api/studies", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/studies", headers={"Authorization": "Basic abc"}).status_code == 401
    hooks_only = _token(console, "admin1", ["hooks"])
    assert client.get("/api/studies", headers=hooks_only).status_code == 403
    read = _token(console, "admin1", ["read"])
    # a read-only token of an admin cannot use admin pages (the admin scope is missing)
    assert client.get("/admin/users", headers=read).status_code == 403
    with console.db.write() as session:
        for row in user_repo.list_api_tokens(session):
            user_repo.revoke_api_token(session, row.id)
    assert client.get("/api/studies", headers=read).status_code == 401


def test_search_validation_errors_are_4xx(console: Console) -> None:
    headers = _token(console, "viewer1", ["read"])
    client = console.client()
    assert client.get("/api/studies?page=0", headers=headers).status_code == 422
    assert client.get("/api/studies?sort=drop", headers=headers).status_code == 422
    assert client.get("/api/jobs?state=weird", headers=headers).status_code == 422
