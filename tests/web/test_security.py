"""Password hashing, the password policy and CSRF tokens."""

from __future__ import annotations

import pytest

from web.security import (
    common_passwords,
    csrf_for,
    csrf_matches,
    generate_password,
    hash_password,
    password_problem,
    verify_password,
)


def test_hash_and_verify() -> None:
    hashed = hash_password("a long enough password")
    assert hashed.startswith("$argon2") and verify_password(hashed, "a long enough password")
    assert not verify_password(hashed, "wrong") and not verify_password(None, "anything")
    assert not verify_password("not-a-hash", "x")


def test_csrf_tokens_are_bound_to_the_session_and_the_key() -> None:
    assert csrf_matches("abc", "abc") and not csrf_matches("abc", "abd")
    assert not csrf_matches(None, None) and not csrf_matches("", "")
    token = csrf_for("key", "session-a")
    assert token == csrf_for("key", "session-a")
    assert token != csrf_for("key", "session-b") and token != csrf_for("other key", "session-a")


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short", "at least"),
        ("x" * 2000, "too long"),
        ("aaaaaaaaaa", "too few"),
        ("abababababab", "too few"),
        ("abcdeabcde", "too few"),  # one unit repeated
        ("abcdefghijkl", "too few"),  # a run
        ("qwertyuiop", "commonly used"),
        ("1q2w3e4r5t", "commonly used"),
        ("Password123!", "commonly used"),  # a listed word with digits and a symbol added
        ("!!Sunshine2026", "commonly used"),
        ("alice-is-the-best", "username"),
        ("ecila backwards!", "username"),
        ("my Al.Ice password", "username"),
        ("dr-who-rules-2026", "e-mail"),
    ],
)
def test_password_policy_refuses(password: str, reason: str) -> None:
    problem = password_problem(password, username="alice", email="dr.who@example.org")
    assert problem is not None and reason in problem, problem


@pytest.mark.parametrize(
    "password", ["correct horse battery", "ten chars!", "Tr0ub4dor&3-xk", "mauve giraffe oboe"]
)
def test_password_policy_accepts(password: str) -> None:
    assert password_problem(password, username="alice", email="alice@example.org") is None


def test_generated_passwords_pass_the_policy_and_the_list_is_shipped() -> None:
    assert len(common_passwords()) > 9000 and "password" in common_passwords()
    assert all(password_problem(generate_password(), username="admin") is None for _ in range(50))
