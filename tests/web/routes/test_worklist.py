"""The review worklist: filters, failures shown as failures, the live fragment and the nav badge."""

from __future__ import annotations

import pytest

from node.db.engine import Database
from node.db.orm import Job, Study
from node.db.repositories import worklist
from tests.web.conftest import Console
from tests.web.processed import ProcessedStudy


def _add_job(console: Console, study: ProcessedStudy, **fields: object) -> int:
    with console.db.write() as session:
        source = session.get(Job, study.job_id)
        assert source is not None
        job = Job(study_pk=source.study_pk, **fields)
        session.add(job)
        session.flush()
        return job.id


@pytest.fixture
def three_jobs(
    processed: tuple[Console, ProcessedStudy],
) -> tuple[Console, ProcessedStudy, int, int]:
    console, study = processed  # job 1: demo-mr, lesion, Moderate, review pending
    failed = _add_job(
        console, study, pipeline_name="demo-3d", state="failed", error="model crashed: OOM",
        summary={"top_class": "ghost", "severity": "High"},
    )  # fmt: skip
    high = _add_job(
        console, study, pipeline_name="demo-2d", state="succeeded", review_state="approved",
        summary={"top_class": "nodule", "severity": "High", "confidence": 0.93},
    )  # fmt: skip
    return console, study, failed, high


def _jobs(html: str) -> list[int]:
    import re

    return [int(n) for n in re.findall(r'class="worklist-row[^"]*" data-job="(\d+)"', html)]


def test_rows_and_failures(three_jobs: tuple[Console, ProcessedStudy, int, int]) -> None:
    console, study, failed, high = three_jobs
    client = console.login("radiologist1")
    page = client.get("/worklist")
    assert page.status_code == 200
    assert _jobs(page.text) == [high, failed, study.job_id]
    row = page.text.split(f'data-job="{failed}"')[1].split("</tr>")[0]
    assert "failed" in row and "model crashed: OOM" in row
    assert "ghost" not in row and "High" not in row  # a failure is not a result
    # the review link carries the worklist's filters and sort (next/previous study follow them)
    assert f'href="/review/{study.job_id}?sort=newest">Review<' in page.text
    assert f'href="/review/{failed}' not in page.text


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("review=pending", ["job"]),
        ("review=approved", ["high"]),
        ("severity=High", ["high", "failed"]),
        ("severity=Moderate", ["job"]),
        ("classification=lesion", ["job"]),
        ("modality=MR", ["high", "failed", "job"]),
        ("modality=mr", ["high", "failed", "job"]),
        ("modality=M", []),  # a whole modality, not a substring
        ("pipeline=demo-2d", ["high"]),
        ("state=failed", ["failed"]),
        ("date_from=29990101", []),
        ("date_to=29990101&sort=oldest", ["job", "failed", "high"]),
    ],
)
def test_filters(
    three_jobs: tuple[Console, ProcessedStudy, int, int], query: str, expected: list[str]
) -> None:
    console, study, failed, high = three_jobs
    ids = {"job": study.job_id, "failed": failed, "high": high}
    client = console.login("viewer1")
    assert _jobs(client.get(f"/worklist?{query}").text) == [ids[e] for e in expected]
    assert _jobs(client.get(f"/worklist/rows?{query}").text) == [ids[e] for e in expected]


@pytest.mark.parametrize(
    "query", ["severity=Extreme", "review=maybe", "state=done", "date_from=2026-01-01", "sort=x"]
)
def test_bad_filters_are_refused(processed: tuple[Console, ProcessedStudy], query: str) -> None:
    console, _ = processed
    response = console.login("viewer1").get(f"/worklist?{query}")
    assert response.status_code in (400, 422)


def test_nav_badge_and_live_counts(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    client = console.login("radiologist1")
    page = client.get("/studies").text
    assert 'id="review-badge" data-count="awaiting">1<' in page
    assert 'href="/worklist?review=pending" id="awaiting-link"' in client.get("/").text
    rows = client.get("/worklist/rows?review=pending")
    assert rows.headers["x-live-counts"] == "awaiting=1" and "<html" not in rows.text
    with console.db.write() as session:
        job = session.get(Job, study.job_id)
        assert job is not None
        job.review_state = "approved"
    assert client.get("/worklist/rows").headers["x-live-counts"] == "awaiting=0"
    assert 'class="badge zero" id="review-badge" data-count="awaiting">0<' in client.get("/").text


def test_json_filters_in_the_database(db: Database) -> None:
    """Severity and class are filtered by SQL on SQLite and PostgreSQL alike."""
    with db.write() as session:
        study = Study(study_instance_uid="1.2.3.4", modalities="CT\\SEG", study_date="20260101")
        session.add(study)
        session.flush()
        for i, (cls, sev) in enumerate([("a", "Low"), ("b", "High"), ("a", "High")]):
            session.add(Job(study_pk=study.id, pipeline_name=f"p{i}", state="succeeded",
                            summary={"top_class": cls, "severity": sev}))  # fmt: skip
    with db.read() as session:
        rows, total = worklist.search(
            session, worklist.WorklistFilter(severity="High", classification="a", modality="SEG")
        )
        assert total == 1 and [r.pipeline for r in rows] == ["p2"]
        assert worklist.choices(session)["classes"] == ["a", "b"]
        assert worklist.choices(session)["modalities"] == ["CT", "SEG"]
