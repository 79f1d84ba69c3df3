"""Password hashing, CSRF comparison and the per-client login throttle."""

from __future__ import annotations

from web.security import (
    LoginThrottle,
    csrf_matches,
    hash_password,
    password_problem,
    verify_password,
)


def test_hash_and_verify() -> None:
    hashed = hash_password("a long enough password")
    assert hashed.startswith("$argon2") and verify_password(hashed, "a long enough password")
    assert not verify_password(hashed, "wrong") and not verify_password(None, "anything")
    assert not verify_password("not-a-hash", "x")


def test_password_rules_and_csrf() -> None:
    assert password_problem("short") and password_problem("x" * 2000)
    assert password_problem("ten chars!") is None
    assert csrf_matches("abc", "abc") and not csrf_matches("abc", "abd")
    assert not csrf_matches(None, None) and not csrf_matches("", "")


def test_throttle_window_and_reset() -> None:
    throttle = LoginThrottle(max_failures=2, window_s=10, max_clients=2)
    throttle.record_failure("a", now=0)
    assert not throttle.blocked("a", now=1)
    throttle.record_failure("a", now=1)
    assert throttle.blocked("a", now=2) and not throttle.blocked("a", now=12)
    throttle.reset("a")
    assert not throttle.blocked("a", now=2)
    for client in ("b", "c", "d"):
        throttle.record_failure(client, now=0)
    assert len(throttle._failures) <= 2  # memory stays bounded
