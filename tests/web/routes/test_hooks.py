"""``POST /api/hooks/orthanc`` with a real Orthanc behind it: secret checked, pull done in background."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from core.config import Settings
from node.db.engine import Database
from node.db.orm import Instance, OrthancPull
from tests.conftest import SHARED_DATA
from tests.orthanc.harness import ORTHANC_BIN, OrthancProcess
from web.main import create_app
from web.routes.hooks import SECRET_HEADER

MR_SERIES = SHARED_DATA / "mr-series-ge-adc"


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancProcess]:
    if ORTHANC_BIN is None:
        pytest.skip("Orthanc not installed")
    process = OrthancProcess(tmp_path / "orthanc")
    process.start()
    yield process
    process.stop()


def app_settings(settings: Settings, orthanc_url: str, secret: str = "hook-secret") -> Settings:
    data = settings.model_dump()
    data["hook_secret"] = secret
    data["orthanc_sources"] = [{"url": orthanc_url}]
    return Settings(**data)


def rows(db: Database) -> tuple[int, int]:
    with db.read() as session:
        instances = session.scalar(select(func.count(Instance.id))) or 0
        pulls = session.scalar(select(func.count(OrthancPull.id))) or 0
        return int(instances), int(pulls)


@pytest.mark.integration
def test_hook_queues_and_pulls_the_study(
    settings: Settings, sqlite_db: Database, orthanc: OrthancProcess
) -> None:
    if not MR_SERIES.is_dir():
        pytest.skip(f"shared sample data not found at {MR_SERIES}")
    for path in sorted(MR_SERIES.glob("*.dcm"))[:4]:
        answer = httpx.post(
            f"{orthanc.url}/instances", content=path.read_bytes(), timeout=10
        ).json()
    client = TestClient(create_app(app_settings(settings, orthanc.url), sqlite_db))
    client.post(
        "/api/hooks/orthanc", json={"study_id": "0"}, headers={SECRET_HEADER: "no"}
    )  # warm-up
    started = time.monotonic()
    response = client.post(
        "/api/hooks/orthanc",
        json={"study_id": answer["ParentStudy"]},
        headers={SECRET_HEADER: "hook-secret"},
    )
    assert response.status_code == 202, response.text
    assert time.monotonic() - started < 1.0  # the pull is not done inside the request
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and rows(sqlite_db) != (4, 0):
        time.sleep(0.2)
    assert rows(sqlite_db) == (4, 0)


def test_wrong_secret_is_refused_and_nothing_queued(
    settings: Settings, sqlite_db: Database
) -> None:
    client = TestClient(create_app(app_settings(settings, "http://127.0.0.1:9"), sqlite_db))
    for headers in ({SECRET_HEADER: "guess"}, {}):
        response = client.post("/api/hooks/orthanc", json={"study_id": "abc-123"}, headers=headers)
        assert response.status_code == 403
    assert rows(sqlite_db) == (0, 0)


def test_hook_is_off_without_a_configured_secret(settings: Settings, sqlite_db: Database) -> None:
    client = TestClient(
        create_app(app_settings(settings, "http://127.0.0.1:9", secret=""), sqlite_db)
    )
    response = client.post(
        "/api/hooks/orthanc", json={"study_id": "abc"}, headers={SECRET_HEADER: ""}
    )
    assert response.status_code == 503


def test_bad_study_id_is_a_clear_422(settings: Settings, sqlite_db: Database) -> None:
    client = TestClient(create_app(app_settings(settings, "http://127.0.0.1:9"), sqlite_db))
    response = client.post(
        "/api/hooks/orthanc", json={"study_id": "../../etc"}, headers={SECRET_HEADER: "hook-secret"}
    )
    assert response.status_code == 422
    assert rows(sqlite_db) == (0, 0)
