"""The console stays responsive with thousands of studies: dashboard, search page, API stats.

Prints its timings (run with ``-s``); the bounds are generous because the CI machine is shared.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import insert

from core.config import Settings
from node.db.engine import Database
from node.db.orm import Job, Study, utcnow
from tests.web.conftest import make_console

STUDIES = 5000
pytestmark = pytest.mark.slow


def _seed(db: Database) -> None:
    now = utcnow()
    with db.write() as session:
        session.execute(
            insert(Study),
            [
                {
                    "study_instance_uid": f"1.2.826.0.1.3680043.77.{i}",
                    "patient_id": f"P{i:05d}",
                    "patient_name": f"Doe^Pat{i:05d}",
                    "accession_number": f"ACC{i:05d}",
                    "study_date": f"2024{(i % 12) + 1:02d}{(i % 28) + 1:02d}",
                    "modalities": "CT",
                    "state": "processed",
                    "first_received_at": now - timedelta(hours=i % 400),
                    "last_received_at": now - timedelta(minutes=i),
                }
                for i in range(STUDIES)
            ],
        )
        session.execute(
            insert(Job),
            [
                {
                    "study_pk": i + 1,
                    "pipeline_name": "demo",
                    "state": "succeeded",
                    "review_state": "not_required",
                    "duration_s": 1.0 + i % 7,
                    "summary": {
                        "top_class": ["normal", "abnormal"][i % 2],
                        "confidence": (i % 100) / 100,
                        "severity": ["Low", "Moderate", "High"][i % 3],
                        "processing_seconds": 1.0,
                    },
                }
                for i in range(STUDIES)
            ],
        )


def test_pages_stay_fast_with_many_studies(settings: Settings, sqlite_db: Database) -> None:
    _seed(sqlite_db)
    console = make_console(settings, sqlite_db)
    client = console.login("viewer1")
    timings = {}
    for name, path in [
        ("dashboard", "/"),
        ("search page 100", "/studies?page=100"),
        ("search by patient", "/studies?patient=pat0420"),
        ("api stats", "/api/stats"),
        ("api studies", "/api/studies?per_page=200"),
    ]:
        client.get(path)  # warm
        start = time.perf_counter()
        response = client.get(path)
        timings[name] = time.perf_counter() - start
        assert response.status_code == 200
    print(
        "\n"
        + "\n".join(
            f"{name}: {seconds * 1000:.0f} ms ({STUDIES} studies)"
            for name, seconds in timings.items()
        )
    )
    assert max(timings.values()) < 3.0, timings
