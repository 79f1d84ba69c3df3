"""Deleting users (never oneself, never the last active admin), editing e-mails, the audit CSV."""

from __future__ import annotations

import csv
import io

from node.db.orm import AuditEvent, User
from node.db.repositories import audit
from node.db.repositories import users as user_repo
from tests.web.conftest import Console, csrf_of


def _user(console: Console, username: str) -> User | None:
    with console.db.read() as session:
        found = user_repo.get_by_username(session, username)
        if found is not None:
            session.expunge(found)
        return found


def _id(console: Console, username: str) -> int:
    found = _user(console, username)
    assert found is not None
    return found.id


def test_delete_user_with_sessions_and_tokens(console: Console) -> None:
    victim = console.login("viewer1")
    with console.db.write() as session:
        owner = user_repo.get_by_username(session, "viewer1")
        assert owner is not None
        user_repo.create_api_token(session, owner, "t", "viewer-token", ["read"])
    assert victim.get("/studies").status_code == 200
    admin = console.login("admin1")
    csrf = csrf_of(admin, "/admin/users")
    assert "Delete user viewer1?" in admin.get("/admin/users").text  # the confirmation
    response = admin.post(
        f"/admin/users/{_id(console, 'viewer1')}/delete", data={"csrf_token": csrf}
    )
    assert response.status_code == 303
    assert _user(console, "viewer1") is None
    assert victim.get("/studies").status_code == 303  # the session went with the account
    token = {"Authorization": "Bearer viewer-token"}
    assert console.client().get("/api/studies", headers=token).status_code == 401
    with console.db.read() as session:
        events = audit.query(session, action="user.delete", entity_id="viewer1")
        assert [e.actor for e in events] == ["admin1"]


def test_no_self_delete_but_another_admin(console: Console) -> None:
    """The caller is an active admin and cannot delete itself, so an admin always remains."""
    admin = console.login("admin1")
    csrf = csrf_of(admin, "/admin/users")
    assert (
        f'action="/admin/users/{_id(console, "admin1")}/delete"'
        not in admin.get("/admin/users").text
    )
    own = admin.post(f"/admin/users/{_id(console, 'admin1')}/delete", data={"csrf_token": csrf})
    assert own.status_code == 409 and _user(console, "admin1") is not None
    first = admin.post(f"/admin/users/{_id(console, 'admin')}/delete", data={"csrf_token": csrf})
    assert first.status_code == 303 and _user(console, "admin") is None
    assert admin.post("/admin/users/999/delete", data={"csrf_token": csrf}).status_code == 404
    assert admin.post(f"/admin/users/{_id(console, 'viewer1')}/delete").status_code == 403


def test_edit_email(console: Console) -> None:
    admin = console.login("admin1")
    csrf = csrf_of(admin, "/admin/users")
    viewer = _id(console, "viewer1")
    ok = admin.post(f"/admin/users/{viewer}/email", data={"csrf_token": csrf, "email": " v@x.org "})
    assert ok.status_code == 303
    found = _user(console, "viewer1")
    assert found is not None and found.email == "v@x.org"
    taken = {"csrf_token": csrf, "email": "radiologist1@example.test"}
    assert admin.post(f"/admin/users/{viewer}/email", data=taken).status_code == 409
    bad = {"csrf_token": csrf, "email": "not an address"}
    assert admin.post(f"/admin/users/{viewer}/email", data=bad).status_code == 400
    cleared = admin.post(f"/admin/users/{viewer}/email", data={"csrf_token": csrf, "email": ""})
    assert cleared.status_code == 303
    found = _user(console, "viewer1")
    assert found is not None and found.email == ""
    with console.db.read() as session:
        assert len(audit.query(session, action="user.email", entity_id="viewer1")) == 2


def test_audit_csv_has_the_page_filters_and_is_spreadsheet_safe(console: Console) -> None:
    with console.db.write() as session:
        for i in range(3):
            audit.record(session, "test.event", entity_type="thing", entity_id=i, actor="bob")
        audit.record(session, "test.event", actor="eve", detail='=HYPERLINK("http://x")')
        audit.record(session, "other.event", actor="bob")
    admin = console.login("admin1")
    response = admin.get("/admin/audit.csv?action=test.&actor=bob")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0][:4] == ["id", "at", "actor", "action"]
    assert [(r[2], r[3], r[5]) for r in rows[1:]] == [
        ("bob", "test.event", str(i)) for i in (2, 1, 0)
    ]
    eve = list(csv.reader(io.StringIO(admin.get("/admin/audit.csv?actor=eve").text)))
    assert eve[1][8] == '\'=HYPERLINK("http://x")'  # not a formula when opened
    with console.db.read() as session:
        total = session.query(AuditEvent).count()
    assert len(list(csv.reader(io.StringIO(admin.get("/admin/audit.csv").text)))) == total + 1
    assert 'href="/admin/audit.csv?actor=bob' in admin.get("/admin/audit?actor=bob").text


def test_a_stale_page_for_a_deleted_account_changes_no_other(console: Console) -> None:
    """An admin's users page still shows a deleted account; the next account created takes a
    new number, so "make admin" from that page finds nothing (404) instead of promoting the
    newcomer."""
    admin = console.login("admin1")
    csrf = csrf_of(admin, "/admin/users")
    created = admin.post("/admin/users", data={"csrf_token": csrf, "username": "locum1"})
    assert created.status_code == 303
    stale = _id(console, "locum1")  # the newest account, as a page shows it
    deleted = admin.post(f"/admin/users/{stale}/delete", data={"csrf_token": csrf})
    assert deleted.status_code == 303 and _user(console, "locum1") is None
    admin.post("/admin/users", data={"csrf_token": csrf, "username": "newcomer"})
    assert _id(console, "newcomer") > stale
    promoted = admin.post(f"/admin/users/{stale}/role", data={"csrf_token": csrf, "role": "admin"})
    assert promoted.status_code == 404
    newcomer = _user(console, "newcomer")
    assert newcomer is not None and newcomer.role == "viewer"
