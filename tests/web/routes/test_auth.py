"""Login, CSRF, lockout, logout, idle timeout, password reset by mail and by admin link."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message

from core.config import Settings, load_settings
from node.db.engine import Database
from node.db.orm import AuditEvent, PasswordResetToken, User, utcnow
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


def test_login_sets_httponly_samesite_cookie_and_records_last_login(console: Console) -> None:
    client = console.client()
    response = login(client, "viewer1")
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    assert client.get("/").status_code == 200
    with console.db.read() as session:
        user = session.query(User).filter_by(username="viewer1").one()
        assert user.last_login_at is not None and user.created_at <= user.last_login_at


def test_secure_cookie_setting_marks_cookie_secure(settings: Settings, sqlite_db: Database) -> None:
    secure = make_console(
        settings.model_copy(
            update={"web": settings.web.model_copy(update={"secure_cookies": True})}
        ),
        sqlite_db,
    )
    response = login(secure.client(), "viewer1")
    assert "secure" in response.headers["set-cookie"].lower()


def test_wrong_and_unknown_users_get_the_same_answer(console: Console) -> None:
    wrong = login(console.client(), "viewer1", "not the password")
    unknown = login(console.client(), "nobody-here", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    strip = re.compile(r'value="[^"]*"')
    assert strip.sub("", wrong.text) == strip.sub("", unknown.text)


def test_unknown_user_costs_a_hash_like_a_known_one(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    from argon2 import PasswordHasher

    from web import security

    real = PasswordHasher()  # production cost for this comparison
    monkeypatch.setattr(security, "_HASHER", real)
    monkeypatch.setattr(security, "_DUMMY_HASH", real.hash("dummy password"))
    with console.db.write() as session:
        session.query(User).filter_by(username="viewer1").one().password_hash = real.hash(PASSWORD)

    def timed(username: str) -> float:
        client = console.client()
        token = csrf_of(client)
        start = time.perf_counter()
        client.post(
            "/login", data={"username": username, "password": "x" * 12, "csrf_token": token}
        )
        return time.perf_counter() - start

    known = min(timed("viewer1") for _ in range(3))
    unknown = min(timed("ghost") for _ in range(3))
    print(
        f"\nlogin POST, production argon2: known user {known * 1000:.0f} ms, "
        f"unknown user {unknown * 1000:.0f} ms"
    )
    assert unknown > known * 0.5, (known, unknown)


def test_post_without_or_with_wrong_csrf_token_is_refused(console: Console) -> None:
    client = console.client()
    csrf_of(client)
    missing = client.post("/login", data={"username": "viewer1", "password": PASSWORD})
    wrong = client.post(
        "/login", data={"username": "viewer1", "password": PASSWORD, "csrf_token": "forged"}
    )
    assert missing.status_code == wrong.status_code == 403
    assert "CSRF" in missing.text
    admin = console.login("admin1")
    refused = admin.post("/admin/users", data={"username": "mallory", "role": "admin"})
    assert refused.status_code == 403
    with console.db.read() as session:
        assert session.query(User).filter_by(username="mallory").first() is None


def test_repeated_failures_delay_even_the_right_password(console: Console, clock: Clock) -> None:
    limit = console.settings.web.login_max_failures
    for _ in range(limit):
        assert login(console.client(), "radiologist1", "wrong password!").status_code == 401
    early = login(console.client(), "radiologist1", PASSWORD)
    assert early.status_code == 429 and "try again in 1 s" in early.text
    clock.advance(seconds=1)
    assert login(console.client(), "radiologist1", PASSWORD).status_code == 303
    with console.db.read() as session:
        assert session.query(AuditEvent).filter_by(action="auth.login_throttled").count() == 1


def test_one_client_spraying_usernames_is_throttled(
    settings: Settings, sqlite_db: Database
) -> None:
    console = make_console(with_web(settings, login_address_max_failures=3), sqlite_db)
    for i in range(3):
        login(console.client(), f"guess{i}", "wrong password!")
    assert login(console.client(), "viewer1", PASSWORD).status_code == 429


def test_open_redirect_after_login_is_refused(console: Console) -> None:
    client = console.client()
    token = csrf_of(client)
    response = client.post(
        "/login",
        data={
            "username": "viewer1",
            "password": PASSWORD,
            "csrf_token": token,
            "next": "https://evil.test/",
        },
    )
    assert response.headers["location"] == "/"


def test_self_registration_is_off_by_default(console: Console) -> None:
    assert console.client().get("/register").status_code == 404


# -- password reset -----------------------------------------------------------------------------


class _Sink(Message):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[object] = []

    def handle_message(self, message: object) -> None:
        self.messages.append(message)


@pytest.fixture
def smtp_sink() -> Iterator[tuple[int, _Sink]]:
    sink = _Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, sink
    finally:
        controller.stop()


def _reset_via_mail(console: Console, sink: _Sink, username: str) -> str:
    client = console.client()
    token = csrf_of(client, "/password/forgot")
    response = client.post(
        "/password/forgot",
        data={"login": username, "csrf_token": token},
        headers={"Host": "evil.example"},
    )
    assert response.status_code == 200
    for _ in range(50):
        if sink.messages:
            break
        time.sleep(0.05)
    assert len(sink.messages) == 1
    body = sink.messages[0].get_payload(decode=True).decode()  # type: ignore[attr-defined]
    match = re.search(r"/password/reset\?token=([\w-]+)", body)
    assert match, body
    assert "evil.example" not in body  # links never follow the request's Host header
    return match.group(1)


def _set_password(console: Console, token: str, password: str):  # type: ignore[no-untyped-def]
    client = console.client()
    page = client.get(f"/password/reset?token={token}")
    if page.status_code != 200:
        return page
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    return client.post(
        "/password/reset",
        data={"token": token, "password": password, "password2": password, "csrf_token": csrf},
    )


def test_reset_by_mail_is_single_use(
    settings: Settings, sqlite_db: Database, smtp_sink: tuple[int, _Sink]
) -> None:
    port, sink = smtp_sink
    with_smtp = load_settings(
        None,
        **{**settings.model_dump(exclude={"smtp"}), "smtp": {"host": "127.0.0.1", "port": port}},
    )
    console = make_console(with_smtp, sqlite_db)
    other = console.login("viewer1")  # a session open before the reset is signed out by it
    token = _reset_via_mail(console, sink, "viewer1")
    assert sink.messages[0]["To"] == "viewer1@example.test"  # type: ignore[index]
    assert _set_password(console, token, "a brand new password").status_code == 303
    assert other.get("/").status_code == 303
    assert login(console.client(), "viewer1", "a brand new password").status_code == 303
    assert login(console.client(), "viewer1", PASSWORD).status_code == 401
    again = _set_password(console, token, "yet another password")
    assert again.status_code == 400 and "already used" in again.text


def test_reset_token_expires(
    settings: Settings, sqlite_db: Database, smtp_sink: tuple[int, _Sink]
) -> None:
    port, sink = smtp_sink
    with_smtp = load_settings(
        None,
        **{**settings.model_dump(exclude={"smtp"}), "smtp": {"host": "127.0.0.1", "port": port}},
    )
    console = make_console(with_smtp, sqlite_db)
    token = _reset_via_mail(console, sink, "radiologist1@example.test")
    with console.db.write() as session:
        for row in session.query(PasswordResetToken).all():
            row.expires_at = utcnow() - timedelta(seconds=1)
    response = _set_password(console, token, "a brand new password")
    assert response.status_code == 400 and "expired" in response.text
    assert login(console.client(), "radiologist1", PASSWORD).status_code == 303


def test_without_smtp_an_admin_issues_a_reset_link(console: Console) -> None:
    client = console.client()
    token = csrf_of(client)
    response = client.post("/password/forgot", data={"login": "viewer1", "csrf_token": token})
    assert response.status_code == 400 and "administrator" in response.text
    admin = console.login("admin1")
    with console.db.read() as session:
        viewer_id = session.query(User).filter_by(username="viewer1").one().id
    csrf = csrf_of(admin, "/admin/users")
    assert (
        admin.post(f"/admin/users/{viewer_id}/reset-link", data={"csrf_token": csrf}).status_code
        == 303
    )
    page = admin.get("/admin/users").text
    link = re.search(r"/password/reset\?token=([\w-]+)", page)
    assert link, page
    assert _set_password(console, link.group(1), "chosen by the user").status_code == 303
    assert login(console.client(), "viewer1", "chosen by the user").status_code == 303


def test_self_registration_when_enabled_creates_a_viewer(
    settings: Settings, sqlite_db: Database
) -> None:
    open_node = settings.model_copy(
        update={"web": settings.web.model_copy(update={"self_registration": True})}
    )
    console = make_console(open_node, sqlite_db)
    client = console.client()
    token = csrf_of(client, "/register")
    short = client.post(
        "/register", data={"csrf_token": token, "username": "newbie", "password": "short"}
    )
    assert short.status_code == 400 and "at least" in short.text
    derived = client.post(
        "/register",
        data={"csrf_token": token, "username": "newbie", "password": "newbie-forever-2026"},
    )
    assert derived.status_code == 400 and "username" in derived.text
    ok = client.post(
        "/register",
        data={"csrf_token": token, "username": "newbie", "password": "long enough secret"},
    )
    assert ok.status_code == 303
    with console.db.read() as session:
        assert session.query(User).filter_by(username="newbie").one().role == "viewer"


def test_change_own_password_keeps_this_session(console: Console) -> None:
    client = console.login("viewer1")
    token = csrf_of(client, "/account")
    wrong = client.post(
        "/account/password",
        data={"csrf_token": token, "current": "nope", "password": "another long secret"},
    )
    assert wrong.status_code == 400
    ok = client.post(
        "/account/password",
        data={"csrf_token": token, "current": PASSWORD, "password": "another long secret"},
    )
    assert ok.status_code == 303 and client.get("/").status_code == 200
    assert login(console.client(), "viewer1", "another long secret").status_code == 303
