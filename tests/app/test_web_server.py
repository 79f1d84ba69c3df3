"""The console as ``pacsnode serve`` serves it (real uvicorn over loopback): a forged
``X-Forwarded-For`` from a peer that is not a trusted proxy changes neither the throttled address
nor the audit log; from a trusted proxy it names the real client."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from app.console import web_server_config
from core.config import Settings
from node.db.engine import Database
from node.db.orm import AuditEvent, utcnow
from tests.conftest import free_port
from tests.web.conftest import (  # noqa: F401 - cheap_password_hashing is an autouse fixture
    Clock,
    cheap_password_hashing,
    with_web,
)

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@contextmanager
def serving(settings: Settings, db: Database) -> Iterator[str]:
    port = free_port()
    config = web_server_config(
        settings.model_copy(update={"web_host": "127.0.0.1", "web_port": port}), db
    )
    config.app.state.web.clock = Clock(utcnow())  # frozen: a delay cannot run out mid-test
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _failed_login(base: str, forwarded_for: str) -> int:
    with httpx.Client(base_url=base) as client:
        csrf = CSRF_RE.search(client.get("/login").text).group(1)  # type: ignore[union-attr]
        return client.post(
            "/login",
            data={"username": "ghost", "password": "x" * 12, "csrf_token": csrf},
            headers={"X-Forwarded-For": forwarded_for},
        ).status_code


def _audited_clients(db: Database) -> list[str]:
    with db.read() as session:
        return [e.detail for e in session.query(AuditEvent).filter_by(action="auth.login_failed")]


def test_forged_forwarded_for_from_loopback_is_not_believed(
    settings: Settings, sqlite_db: Database
) -> None:
    with serving(with_web(settings, login_address_max_failures=2), sqlite_db) as base:
        assert _failed_login(base, "203.0.113.1") == 401
        assert _failed_login(base, "203.0.113.2") == 401
        assert _failed_login(base, "203.0.113.3") == 429  # one address: the connection's
    assert _audited_clients(sqlite_db) == ["client 127.0.0.1", "client 127.0.0.1"]


def test_forwarded_for_from_a_trusted_proxy_names_the_client(
    settings: Settings, sqlite_db: Database
) -> None:
    with serving(with_web(settings, trusted_proxies=["127.0.0.0/8"]), sqlite_db) as base:
        assert _failed_login(base, "203.0.113.7") == 401
    assert _audited_clients(sqlite_db) == ["client 203.0.113.7"]
