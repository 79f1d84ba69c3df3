"""Users, login delays, sessions, reset tokens and API tokens on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.domain import Role
from node.db.engine import Database
from node.db.orm import utcnow
from node.db.repositories import throttle, users, web_sessions


def test_usernames_unique_case_insensitively(db: Database) -> None:
    with db.write() as session:
        users.create_user(session, "Alice", "h", role=Role.ADMIN, email="a@x.test")
    with db.write() as session, pytest.raises(users.UserExistsError):
        users.create_user(session, "alice", "h", role=Role.VIEWER)
    with db.read() as session:
        assert users.get_by_username(session, "ALICE") is not None
        assert users.get_by_email(session, "A@X.TEST") is not None
        assert users.count_users(session) == 1


def test_progressive_delay_bookkeeping(db: Database) -> None:
    rule = throttle.ThrottleRule(free=3, max_delay=timedelta(seconds=5))
    now = utcnow()
    key = throttle.account_key(" Bob ")
    assert key == throttle.account_key("bob")
    with db.write() as session:
        delays = [throttle.record_failure(session, key, rule, now) for _ in range(6)]
    assert [d.total_seconds() for d in delays] == [0, 0, 1, 2, 4, 5]
    with db.read() as session:
        assert throttle.wait_for(session, key, now) == timedelta(seconds=5)
        assert throttle.wait_for(session, key, now + timedelta(seconds=5)) == timedelta(0)
        assert throttle.failures(session, [key, "address:x"]) == {key: 6}
    with db.write() as session:  # long quiet: the count starts again
        later = now + rule.forget_after + timedelta(seconds=1)
        assert throttle.record_failure(session, key, rule, later) == timedelta(0)
        assert throttle.clear(session, key) and not throttle.clear(session, key)
        throttle.record_failure(session, "address:old", rule, now - timedelta(days=2))
        assert throttle.purge(session, now, timedelta(days=1)) == 1


def test_login_bookkeeping_and_ending_sessions(db: Database) -> None:
    now = utcnow()
    lifetime = web_sessions.Lifetime(idle=timedelta(minutes=30), absolute=timedelta(hours=12))
    with db.write() as session:
        user = users.create_user(session, "bob", "h", role="viewer")
        users.record_login(session, user, now)
        assert user.last_login_at == now
        web_sessions.create(session, "cookie-1", user_pk=user.id, now=now)
        web_sessions.create(session, "cookie-2", user_pk=user.id, now=now - timedelta(hours=13))
        web_sessions.create(session, "anonymous", user_pk=None, now=now, data={"flash": []})
    with db.write() as session:
        row = web_sessions.find(session, "cookie-1")
        assert row is not None and row.token_hash != "cookie-1"
        assert not lifetime.expired(row, now)
        assert lifetime.expired(row, now + timedelta(minutes=31))
        assert web_sessions.save(session, "cookie-1", data={"once": "x"}, seen_at=None) == 1
        assert web_sessions.purge_expired(session, lifetime, now) == 1  # cookie-2, too old
    with db.write() as session:
        assert web_sessions.find(session, "cookie-1").data == {"once": "x"}  # type: ignore[union-attr]
        users.set_password(session, user, "new hash")
        assert web_sessions.find(session, "cookie-1") is None
        assert web_sessions.find(session, "anonymous") is not None
        assert web_sessions.save(session, "cookie-1", data={}, seen_at=now) == 0  # not revived


def test_reset_tokens_single_use_and_expiry(db: Database) -> None:
    with db.write() as session:
        user = users.create_user(session, "carol", "h", role="viewer")
        other = users.create_user(session, "carl", "h", role="viewer")
        users.create_reset_token(session, user, "secret-1", timedelta(minutes=10))
        users.create_reset_token(session, other, "secret-2", timedelta(seconds=-1))
    with db.write() as session:
        row = users.find_valid_reset_token(session, "secret-1", utcnow())
        assert row is not None and row.token_hash != "secret-1"
        users.consume_reset_token(session, row, utcnow())
        assert users.find_valid_reset_token(session, "secret-2", utcnow()) is None
    with db.read() as session:
        assert users.find_valid_reset_token(session, "secret-1", utcnow()) is None


def test_reset_tokens_revoked_by_a_newer_one_and_by_a_password_change(db: Database) -> None:
    hour = timedelta(hours=1)
    with db.write() as session:
        user = users.create_user(session, "erin", "h", role="viewer")
        users.create_reset_token(session, user, "older", hour)
        users.create_reset_token(session, user, "newer", hour)
        assert users.find_valid_reset_token(session, "older", utcnow()) is None
        assert users.find_valid_reset_token(session, "newer", utcnow()) is not None
        users.set_password(session, user, "changed")
        assert users.find_valid_reset_token(session, "newer", utcnow()) is None


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
