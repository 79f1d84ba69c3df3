"""Password guessing: progressive delays that cannot lock the owner out, unlock (console, CLI, reset
link), forged ``X-Forwarded-For``, guessing through the password-change form, reset-link revocation
and a "forgot password" whose answer does not depend on the account existing."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message
from fastapi.testclient import TestClient

from app.cli import main
from core.config import Settings, load_settings
from node.db.engine import Database
from node.db.orm import AuditEvent, AuthThrottle, User
from node.db.repositories import users as user_repo
from tests.conftest import free_port
from tests.web.conftest import (
    PASSWORD,
    Clock,
    Console,
    csrf_of,
    login,
    make_console,
    with_web,
)
from web.main import create_app
from web.security import generate_token


def _from(console: Console, address: str) -> TestClient:
    return TestClient(console.app, follow_redirects=False, client=(address, 40000))


def _fail_from_five_addresses(console: Console, username: str) -> None:
    for i in range(console.settings.web.login_max_failures):
        assert login(_from(console, f"198.51.100.{i + 1}"), username, "not it!").status_code == 401


def test_five_failures_from_five_addresses_only_delay_the_owner(
    console: Console, clock: Clock
) -> None:
    _fail_from_five_addresses(console, "admin1")
    assert login(_from(console, "192.0.2.7"), "admin1").status_code == 429
    clock.advance(seconds=1)  # the first delay is one second, not a lockout
    assert login(_from(console, "192.0.2.7"), "admin1").status_code == 303


def test_delays_grow_and_are_capped(settings: Settings, sqlite_db: Database) -> None:
    console = make_console(with_web(settings, login_max_delay_s=8), sqlite_db)
    clock = Clock(console.app.state.web.clock())
    console.app.state.web.clock = clock
    waits = []
    for i in range(10):
        response = login(_from(console, f"198.51.100.{i}"), "viewer1", "not it!")
        found = re.search(r"try again in (\d+) s", response.text)
        if response.status_code == 429:
            assert found
            waits.append(int(found.group(1)))
            clock.advance(seconds=int(found.group(1)))
            login(_from(console, f"198.51.100.{i}"), "viewer1", "not it!")
    assert waits == [1, 2, 4, 8, 8], waits


def test_throttle_state_is_shared_by_every_web_process(console: Console, clock: Clock) -> None:
    _fail_from_five_addresses(console, "viewer1")
    second_process = create_app(console.settings, console.db)  # same database, new process state
    # the second process reads the same time: on a busy machine its start-up alone can outlast
    # the first one-second delay, which would then have ended by the login below
    second_process.state.web.clock = clock
    response = login(TestClient(second_process, follow_redirects=False), "viewer1")
    assert response.status_code == 429


def test_admin_unlock_in_the_console_and_the_cli(
    console: Console, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fail_from_five_addresses(console, "radiologist1")
    admin = console.login("admin1")
    radiologist = _id(console, "radiologist1")
    assert f"/admin/users/{radiologist}/unlock" in admin.get("/admin/users").text
    response = admin.post(
        f"/admin/users/{radiologist}/unlock", data={"csrf_token": csrf_of(admin, "/admin/users")}
    )
    assert response.status_code == 303
    assert login(console.client(), "radiologist1").status_code == 303

    _fail_from_five_addresses(console, "radiologist1")
    monkeypatch.setenv("PACSNODE_ENVIRONMENT", "test")
    monkeypatch.setenv("PACSNODE_DATABASE_URL", console.settings.effective_database_url)
    assert main(["user", "unlock", "radiologist1"]) == 0
    assert "unlocked 'radiologist1'" in capsys.readouterr().out
    assert login(console.client(), "radiologist1").status_code == 303
    assert main(["user", "unlock", "nobody"]) == 1
    with console.db.read() as session:
        assert session.query(AuditEvent).filter_by(action="auth.unlock").count() == 2


def _id(console: Console, username: str) -> int:
    with console.db.read() as session:
        return session.query(User).filter_by(username=username).one().id


def _reset_with(console: Console, token: str, password: str) -> int:
    client = console.client()
    page = client.get(f"/password/reset?token={token}")
    if page.status_code != 200:
        return page.status_code
    return client.post(
        "/password/reset",
        data={
            "token": token,
            "password": password,
            "password2": password,
            "csrf_token": csrf_of(client, f"/password/reset?token={token}"),
        },
    ).status_code


def _issue(console: Console, username: str) -> str:
    token = generate_token()
    with console.db.write() as session:
        user = user_repo.get_by_username(session, username)
        assert user is not None
        user_repo.create_reset_token(session, user, token, timedelta(hours=1))
    return token


def test_a_valid_reset_link_lifts_the_delay(console: Console) -> None:
    _fail_from_five_addresses(console, "viewer1")
    assert _reset_with(console, _issue(console, "viewer1"), "brand new passphrase") == 303
    assert login(console.client(), "viewer1", "brand new passphrase").status_code == 303


def test_a_newer_link_revokes_the_older_one(console: Console) -> None:
    older, newer = _issue(console, "viewer1"), _issue(console, "viewer1")
    assert _reset_with(console, older, "chosen by the attacker") == 400
    assert _reset_with(console, newer, "chosen by the owner!") == 303


def test_a_password_change_revokes_outstanding_links(console: Console) -> None:
    link = _issue(console, "viewer1")
    client = console.login("viewer1")
    changed = client.post(
        "/account/password",
        data={
            "csrf_token": csrf_of(client, "/account"),
            "current": PASSWORD,
            "password": "changed by the owner",
        },
    )
    assert changed.status_code == 303
    assert _reset_with(console, link, "chosen by the attacker") == 400
    assert login(console.client(), "viewer1", "changed by the owner").status_code == 303


def test_guessing_the_current_password_is_throttled_like_login(
    console: Console, clock: Clock
) -> None:
    client = console.login("viewer1")
    csrf = csrf_of(client, "/account")
    statuses = [
        client.post(
            "/account/password",
            data={"csrf_token": csrf, "current": f"guess {i}", "password": "taken over now"},
        ).status_code
        for i in range(console.settings.web.login_max_failures + 1)
    ]
    assert statuses[:-1] == [400] * console.settings.web.login_max_failures
    assert statuses[-1] == 429
    right_but_early = client.post(
        "/account/password",
        data={"csrf_token": csrf, "current": PASSWORD, "password": "taken over now"},
    )
    assert right_but_early.status_code == 429
    assert login(console.client(), "viewer1").status_code == 429  # the same account budget
    clock.advance(seconds=1)
    assert login(console.client(), "viewer1").status_code == 303


def test_forged_forwarded_for_is_ignored_from_an_untrusted_peer(
    settings: Settings, sqlite_db: Database
) -> None:
    console = make_console(with_web(settings, login_address_max_failures=3), sqlite_db)
    client = _from(console, "203.0.113.9")
    for i in range(3):
        response = client.post(
            "/login",
            data={"username": f"guess{i}", "password": "x" * 12, "csrf_token": csrf_of(client)},
            headers={"X-Forwarded-For": f"10.9.9.{i}"},
        )
        assert response.status_code == 401
    forged = client.post(
        "/login",
        data={"username": "viewer1", "password": PASSWORD, "csrf_token": csrf_of(client)},
        headers={"X-Forwarded-For": "10.9.9.200"},
    )
    assert forged.status_code == 429  # the per-address budget is the real address's
    with console.db.read() as session:
        details = [
            e.detail for e in session.query(AuditEvent).filter_by(action="auth.login_failed")
        ]
        keys = [row.key for row in session.query(AuthThrottle)]
    assert details and all("203.0.113.9" in d and "10.9.9" not in d for d in details)
    assert not any("10.9.9" in key for key in keys)


def test_forwarded_for_is_honoured_from_a_trusted_proxy(
    settings: Settings, sqlite_db: Database
) -> None:
    proxied = with_web(settings, trusted_proxies=["192.0.2.0/24"])
    console = make_console(proxied, sqlite_db)
    client = _from(console, "192.0.2.10")
    response = client.post(
        "/login",
        data={"username": "viewer1", "password": "x" * 12, "csrf_token": csrf_of(client)},
        headers={"X-Forwarded-For": "203.0.113.50, 192.0.2.11"},
    )
    assert response.status_code == 401
    with console.db.read() as session:
        (event,) = session.query(AuditEvent).filter_by(action="auth.login_failed").all()
        assert "client 203.0.113.50" in event.detail


def test_trusted_proxies_must_be_addresses_or_networks(settings: Settings) -> None:
    from core.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="not an IP address"):
        with_web(settings, trusted_proxies=["proxy.example.org"])
    assert with_web(settings, trusted_proxies=[" 10.0.0.0/8", "::1"]).web.trusted_proxies == [
        "10.0.0.0/8",
        "::1",
    ]


# -- forgot password: same answer, same time ----------------------------------------------------


class _SlowRelay(Message):
    """An SMTP relay that takes its time, as a remote one does."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.messages: list[object] = []
        self.arrived = threading.Event()

    def handle_message(self, message: object) -> None:
        time.sleep(self.delay_s)
        self.messages.append(message)
        self.arrived.set()


@pytest.fixture
def slow_relay() -> Iterator[tuple[int, _SlowRelay]]:
    relay = _SlowRelay(delay_s=0.5)
    port = free_port()
    controller = Controller(relay, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, relay
    finally:
        controller.stop()


def test_forgot_password_answers_alike_for_known_and_unknown_accounts(
    settings: Settings, sqlite_db: Database, slow_relay: tuple[int, _SlowRelay]
) -> None:
    port, relay = slow_relay
    with_smtp = load_settings(
        None,
        **{**settings.model_dump(exclude={"smtp"}), "smtp": {"host": "127.0.0.1", "port": port}},
    )
    console = make_console(with_smtp, sqlite_db)

    def ask(login_name: str) -> tuple[float, str]:
        client = console.client()
        csrf = csrf_of(client, "/password/forgot")
        start = time.perf_counter()
        response = client.post("/password/forgot", data={"login": login_name, "csrf_token": csrf})
        elapsed = time.perf_counter() - start
        assert response.status_code == 200
        return elapsed, re.sub(r'value="[^"]*"', "", response.text)

    known, known_page = ask("viewer1")
    unknown, unknown_page = ask("nobody-at-all")
    print(f"\nforgot password: known {known * 1000:.1f} ms, unknown {unknown * 1000:.1f} ms")
    assert known_page == unknown_page
    assert known < relay.delay_s  # the relay's 0.5 s is not in the answer: the mail is queued
    assert relay.arrived.wait(5) and len(relay.messages) == 1
    console.app.state.web.outbox.drain()
    with console.db.read() as session:
        assert session.query(AuditEvent).filter_by(action="auth.reset_requested").count() == 1
