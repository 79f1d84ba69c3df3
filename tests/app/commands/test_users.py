"""``pacsnode user create`` / ``user reset-link`` through the real CLI, and the first-start admin."""

from __future__ import annotations

import re

import pytest

from app.cli import main
from core.config import Settings
from node.db.engine import Database
from node.db.orm import User
from tests.web.conftest import login
from web.main import create_app


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("PACSNODE_ENVIRONMENT", "test")
    monkeypatch.setenv("PACSNODE_DATA_DIR", str(settings.data_dir))
    return settings


def test_user_create_prints_a_generated_password_once(
    cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["user", "create", "chief", "--admin"]) == 0
    out = capsys.readouterr().out
    password = re.search(r"password \(shown once\): (\S+)", out)
    assert password and "created admin user 'chief'" in out
    assert main(["user", "create", "CHIEF"]) == 1
    app = create_app(cli_env)
    from fastapi.testclient import TestClient

    assert (
        login(TestClient(app, follow_redirects=False), "chief", password.group(1)).status_code
        == 303
    )
    db = Database(cli_env.effective_database_url)
    with db.read() as session:
        assert [u.username for u in session.query(User)] == ["chief"]  # no extra first-start admin
    db.dispose()


def test_reset_link_command(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["user", "create", "pat", "--role", "radiologist"]) == 0
    assert main(["user", "reset-link", "pat"]) == 0
    assert re.search(r"/password/reset\?token=[\w-]{30,}", capsys.readouterr().out)
    assert main(["user", "reset-link", "nobody"]) == 1
