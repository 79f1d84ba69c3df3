"""Password hashing, CSRF tokens, login throttling and secret generation for the console.

Everything an attacker could time or replay is handled here in one place: verification always
spends one argon2 computation (a dummy hash for unknown users), CSRF tokens are compared in constant
time, and failed logins are throttled per client address in memory on top of the per-account
lockout kept in the database.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))
MIN_PASSWORD_LENGTH = 10
API_SCOPES = ("read", "review", "hooks", "admin")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; with ``None`` (unknown user) spends the same time and fails."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def password_problem(password: str) -> str | None:
    """A human-readable reason to refuse a new password, or None when it is acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"The password must have at least {MIN_PASSWORD_LENGTH} characters."
    if len(password) > 1024:
        return "The password is too long."
    return None


def generate_password() -> str:
    """A password printed once to an admin; ~120 bits, no look-alike ambiguity issues in URLs."""
    return secrets.token_urlsafe(15)


def generate_token() -> str:
    return secrets.token_urlsafe(32)


def password_fingerprint(password_hash: str) -> str:
    """Stored in the session so that a password change or reset signs every other session out."""
    return password_hash[-16:]


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def csrf_matches(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


@dataclass
class LoginThrottle:
    """Sliding-window limit of failed login attempts per client address (in-process memory).

    The per-account lockout in the database stops guessing one account; this stops one client
    spraying many usernames. Memory is bounded: the oldest addresses are forgotten first.
    """

    max_failures: int = 20
    window_s: float = 300.0
    max_clients: int = 10_000
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _recent(self, client: str, now: float) -> deque[float]:
        entries = self._failures.get(client)
        if entries is None:
            return deque()
        while entries and entries[0] <= now - self.window_s:
            entries.popleft()
        return entries

    def blocked(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            return len(self._recent(client, now)) >= self.max_failures

    def record_failure(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if client not in self._failures and len(self._failures) >= self.max_clients:
                self._failures.pop(next(iter(self._failures)))
            entries = self._failures.setdefault(client, deque())
            entries.append(now)

    def reset(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)
