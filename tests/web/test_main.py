"""The app factory: first-start admin, offline API docs."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from core.config import Settings
from web.main import create_app


def test_first_start_prints_admin_password_once(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pacsnode.web"):
        create_app(settings)
        create_app(settings)  # second start: users exist, nothing printed
    printed = [r.getMessage() for r in caplog.records if "created user 'admin'" in r.getMessage()]
    assert len(printed) == 1
    assert "change-me" not in printed[0] and re.search(r"password \S{16,}", printed[0])


def test_api_docs_need_no_internet(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    client = TestClient(create_app(settings))
    page = client.get("/docs").text
    assert "/static-docs/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    assert client.get("/static-docs/swagger-ui-bundle.js").status_code == 200
    assert client.get("/openapi.json").json()["paths"]["/api/health"]


def test_security_headers(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    response = TestClient(create_app(settings)).get("/login")
    assert response.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "strict-transport-security" not in response.headers
