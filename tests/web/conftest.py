"""Fixtures for the console tests: an app on a migrated database, users of every role, logged-in clients."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.config import Settings, load_settings
from core.domain import Role
from node.db.engine import Database
from node.db.orm import utcnow
from node.db.repositories import users as user_repo
from tests.web.processed import MR_SERIES, ProcessedStudy, build_processed_study
from web.main import create_app
from web.security import hash_password

PASSWORD = "correct horse battery"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Console:
    app: FastAPI
    db: Database
    settings: Settings

    def client(self) -> TestClient:
        return TestClient(self.app, follow_redirects=False)

    def login(self, username: str, password: str = PASSWORD) -> TestClient:
        client = self.client()
        response = login(client, username, password)
        assert response.status_code == 303, response.text
        return client


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 at its minimum cost: the parameters are not under test, the flows are (2 shared CPUs)."""
    from argon2 import PasswordHasher

    from web import security

    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(security, "_HASHER", hasher)
    monkeypatch.setattr(security, "_DUMMY_HASH", hasher.hash("dummy password"))


def csrf_of(client: TestClient, path: str = "/login") -> str:
    page = client.get(path)
    match = CSRF_RE.search(page.text)
    assert match, f"no CSRF token on {path}: {page.status_code} {page.text[:300]}"
    return match.group(1)


def login(client: TestClient, username: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    token = csrf_of(client)
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token, "next": "/"},
    )


def add_user(db: Database, username: str, role: Role, email: str = "") -> None:
    with db.write() as session:
        user_repo.create_user(session, username, hash_password(PASSWORD), role=role, email=email)


def make_console(settings: Settings, db: Database) -> Console:
    app = create_app(settings, db)
    for role in Role:
        add_user(db, role.value + "1", role, email=f"{role.value}1@example.test")
    return Console(app, db, settings)


@pytest.fixture
def console(settings: Settings, sqlite_db: Database) -> Iterator[Console]:
    yield make_console(settings, sqlite_db)


@dataclass
class Clock:
    """The console's clock, moved by the test instead of sleeping."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock(console: Console) -> Clock:
    fake = Clock(utcnow())
    console.app.state.web.clock = fake
    return fake


def with_web(settings: Settings, **web: Any) -> Settings:
    """The test settings with some ``web.*`` values replaced (validated like a real file)."""
    return load_settings(
        None,
        **{**settings.model_dump(exclude={"web"}), "web": {**settings.web.model_dump(), **web}},
    )


def with_archive(settings: Settings, folder: Path) -> Settings:
    """The test settings plus a folder destination called ``archive``."""
    return load_settings(
        None,
        **{
            **settings.model_dump(exclude={"destinations"}),
            "destinations": [{"name": "archive", "kind": "folder", "path": str(folder)}],
        },
    )


@pytest.fixture
def processed(
    settings: Settings, sqlite_db: Database, tmp_path: Path
) -> tuple[Console, ProcessedStudy]:
    """A console over one processed MR study whose SEG awaits review (skips without sample data)."""
    if not MR_SERIES.is_dir():
        pytest.skip(f"sample data missing: {MR_SERIES} (see /work/shared/data/README.md)")
    full = with_archive(settings, tmp_path / "archive")
    study = build_processed_study(full, sqlite_db)
    return make_console(full, sqlite_db), study
