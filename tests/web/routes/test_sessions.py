"""Server-side sessions: what logout, password, role and status changes do to a copied cookie, and
idle/absolute expiry on the console's own (injected) clock."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from node.db.orm import ApiToken, User, WebSession
from node.db.repositories import users as user_repo
from tests.web.conftest import PASSWORD, Clock, Console, csrf_of, login
from web.sessions import SESSION_COOKIE


def _cookie(client: TestClient) -> str:
    value = client.cookies.get(SESSION_COOKIE)
    assert value, "no session cookie"
    return value


def _replay(console: Console, cookie: str) -> int:
    """Status of GET / for a fresh browser holding a copy of ``cookie``."""
    thief = console.client()
    thief.cookies.set(SESSION_COOKIE, cookie)
    return thief.get("/").status_code


def _user_id(console: Console, username: str) -> int:
    with console.db.read() as session:
        return session.query(User).filter_by(username=username).one().id


def _sessions_of(console: Console, username: str) -> int:
    with console.db.read() as session:
        return session.query(WebSession).filter_by(user_pk=_user_id(console, username)).count()


def test_cookie_is_an_opaque_random_id(console: Console) -> None:
    client = console.login("viewer1")
    cookie = _cookie(client)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie)  # no payload, no signature, no user id
    with console.db.read() as session:
        row = session.query(WebSession).one()
        assert row.token_hash != cookie and len(row.token_hash) == 64  # only a digest is stored


def test_logout_ends_the_session_for_every_copy_of_the_cookie(console: Console) -> None:
    client = console.login("viewer1")
    cookie = _cookie(client)
    assert _replay(console, cookie) == 200
    assert client.post("/logout", data={"csrf_token": csrf_of(client, "/")}).status_code == 303
    assert _replay(console, cookie) == 303  # the stolen copy is worthless now
    assert client.get("/").status_code == 303
    assert _sessions_of(console, "viewer1") == 0


def test_login_replaces_a_planted_session_id(console: Console) -> None:
    client = console.client()
    csrf_of(client)  # the anonymous id an attacker could have planted
    planted = _cookie(client)
    assert login(client, "viewer1").status_code == 303
    assert _cookie(client) != planted and _replay(console, planted) == 303


def test_shown_once_secrets_stay_on_the_server_and_go_when_shown(console: Console) -> None:
    admin = console.login("admin1")
    csrf = csrf_of(admin, "/admin/users")
    response = admin.post("/admin/users", data={"username": "newcomer", "csrf_token": csrf})
    assert response.status_code == 303
    assert "set-cookie" not in response.headers  # nothing new travels to the browser
    with console.db.read() as session:
        (row,) = session.query(WebSession).filter(WebSession.user_pk.isnot(None)).all()
        password = re.search(r"\(shown once\): (\S+)", row.data["once"]).group(1)  # type: ignore[union-attr]
    assert password not in _cookie(admin)
    assert password in admin.get("/admin/users").text
    assert password not in admin.get("/admin/users").text  # shown once
    with console.db.read() as session:
        assert all("once" not in (r.data or {}) for r in session.query(WebSession))


def test_idle_lifetime_is_enforced_on_the_server(console: Console, clock: Clock) -> None:
    client = console.login("viewer1")
    cookie = _cookie(client)
    idle = console.settings.web.session_idle_minutes
    clock.advance(minutes=idle * 0.9)
    assert client.get("/").status_code == 200  # activity keeps it alive
    clock.advance(minutes=idle * 0.9)
    assert client.get("/").status_code == 200
    clock.advance(minutes=idle + 1)
    assert _replay(console, cookie) == 303  # expired on the server, whatever the browser keeps
    assert _sessions_of(console, "viewer1") == 0


def test_absolute_lifetime_ends_even_a_busy_session(console: Console, clock: Clock) -> None:
    client = console.login("viewer1")
    step = console.settings.web.session_idle_minutes / 2
    hours = console.settings.web.session_absolute_hours
    for _ in range(int(hours * 60 / step) - 1):
        clock.advance(minutes=step)
        assert client.get("/").status_code == 200
    clock.advance(minutes=2 * step)
    assert client.get("/").status_code == 303


def test_role_change_and_disabling_end_the_users_sessions(console: Console) -> None:
    victim = console.login("radiologist1")
    other = console.login("viewer1")
    admin = console.login("admin1")
    csrf = csrf_of(admin, "/admin/users")
    radiologist, viewer = _user_id(console, "radiologist1"), _user_id(console, "viewer1")
    assert (
        admin.post(
            f"/admin/users/{radiologist}/role", data={"role": "viewer", "csrf_token": csrf}
        ).status_code
        == 303
    )
    assert victim.get("/").status_code == 303
    assert other.get("/").status_code == 200
    assert (
        admin.post(
            f"/admin/users/{viewer}/active", data={"active": "false", "csrf_token": csrf}
        ).status_code
        == 303
    )
    assert other.get("/").status_code == 303
    assert _sessions_of(console, "viewer1") == _sessions_of(console, "radiologist1") == 0
    assert admin.get("/").status_code == 200


def test_password_change_ends_other_sessions_and_renews_this_one(console: Console) -> None:
    client = console.login("viewer1")
    elsewhere = console.login("viewer1")
    before = _cookie(client)
    response = client.post(
        "/account/password",
        data={
            "csrf_token": csrf_of(client, "/account"),
            "current": PASSWORD,
            "password": "a quite different secret",
        },
    )
    assert response.status_code == 303
    assert client.get("/").status_code == 200 and _cookie(client) != before
    assert elsewhere.get("/").status_code == 303 and _replay(console, before) == 303
    assert _sessions_of(console, "viewer1") == 1


def test_api_token_cannot_change_its_owners_password(console: Console) -> None:
    with console.db.write() as session:
        owner = user_repo.get_by_username(session, "admin1")
        assert owner is not None
        for name, scopes in (("hook", ["hooks"]), ("all", ["read", "review", "hooks", "admin"])):
            user_repo.create_api_token(session, owner, name, f"token-{name}-0123456789", scopes)
    for name in ("hook", "all"):
        response = console.client().post(
            "/account/password",
            data={"current": PASSWORD, "password": "taken over by a token"},
            headers={"Authorization": f"Bearer token-{name}-0123456789"},
        )
        assert response.status_code == 403, response.text
    assert console.login("admin1").get("/").status_code == 200  # the password is unchanged
    with console.db.read() as session:
        assert session.query(ApiToken).count() == 2
