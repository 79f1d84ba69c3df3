"""Users, lockout bookkeeping, reset tokens and API tokens on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.domain import Role
from node.db.engine import Database
from node.db.orm import utcnow
from node.db.repositories import users


def test_usernames_unique_case_insensitively(db: Database) -> None:
    with db.write() as session:
        users.create_user(session, "Alice", "h", role=Role.ADMIN, email="a@x.test")
    with db.write() as session, pytest.raises(users.UserExistsError):
        users.create_user(session, "alice", "h", role=Role.VIEWER)
    with db.read() as session:
        assert users.get_by_username(session, "ALICE") is not None
        assert users.get_by_email(session, "A@X.TEST") is not None
        assert users.count_users(session) == 1


def test_lockout_and_login_bookkeeping(db: Database) -> None:
    now = utcnow()
    with db.write() as session:
        user = users.create_user(session, "bob", "h", role="viewer")
        for _ in range(2):
            assert not users.record_failed_login(
                session, user, max_failures=3, lockout=timedelta(minutes=5), now=now
            )
        assert users.record_failed_login(
            session, user, max_failures=3, lockout=timedelta(minutes=5), now=now
        )
        assert users.is_locked(user, now) and not users.is_locked(user, now + timedelta(minutes=6))
        users.record_login(session, user, now)
        assert user.last_login_at == now and user.locked_until is None


def test_reset_tokens_single_use_and_expiry(db: Database) -> None:
    with db.write() as session:
        user = users.create_user(session, "carol", "h", role="viewer")
        users.create_reset_token(session, user, "secret-1", timedelta(minutes=10))
        users.create_reset_token(session, user, "secret-2", timedelta(seconds=-1))
    with db.write() as session:
        row = users.find_valid_reset_token(session, "secret-1", utcnow())
        assert row is not None and row.token_hash != "secret-1"
        users.consume_reset_token(session, row, utcnow())
        assert users.find_valid_reset_token(session, "secret-2", utcnow()) is None
    with db.read() as session:
        assert users.find_valid_reset_token(session, "secret-1", utcnow()) is None


def test_api_tokens(db: Database) -> None:
    with db.write() as session:
        user = users.create_user(session, "dave", "h", role="radiologist")
        token = users.create_api_token(session, user, "hook", "tok", ["hooks"])
    with db.read() as session:
        owner = users.find_api_token(session, "tok")
        assert (
            owner is not None and owner.user.username == "dave" and owner.token.scopes == ["hooks"]
        )
        assert users.find_api_token(session, "other") is None
    with db.write() as session:
        users.revoke_api_token(session, token.id)
    with db.read() as session:
        assert users.find_api_token(session, "tok") is None
        assert [a.username for a in users.user_activity(session)] == ["dave"]
