"""Password hashing, the password policy, CSRF tokens and secret generation for the console.

Everything an attacker could time or replay is handled here in one place: verification always
spends one argon2 computation (a dummy hash for unknown users) and CSRF tokens are compared in
constant time. A CSRF token is an HMAC of the session id under ``secret_key``, so it needs no
storage and changes whenever the session id does (at login).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
import string
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))
MIN_PASSWORD_LENGTH = 10
API_SCOPES = ("read", "review", "hooks", "admin", "predict")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; with ``None`` (unknown user) spends the same time and fails."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


COMMON_PASSWORDS_FILE = Path(__file__).resolve().parent / "data" / "common_passwords.txt"
_AFFIXES = string.digits + string.punctuation + " "
_MIN_DISTINCT = 5


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of most common passwords (lower case); its header names source and licence."""
    lines = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line and not line.startswith("#"))


def _is_common(password: str) -> bool:
    """A listed password, also with digits or symbols added before or after (``Password123!``)."""
    lowered = password.lower()
    variants = {
        lowered,
        lowered.strip(_AFFIXES),
        lowered.rstrip(_AFFIXES),
        lowered.lstrip(_AFFIXES),
    }
    listed = common_passwords()
    return any(v in listed for v in variants if v == lowered or len(v) >= 4)


def _alnum(value: str) -> str:
    return re.sub(r"[^0-9a-z]", "", value.lower())


def _is_monotonous(password: str) -> bool:
    """Few distinct characters, one short unit repeated, or a run like ``abcdefghij``."""
    if len(set(password)) < _MIN_DISTINCT:
        return True
    for size in range(1, len(password) // 2 + 1):
        unit = password[:size]
        if len(password) % size == 0 and unit * (len(password) // size) == password:
            return True
    steps = {ord(b) - ord(a) for a, b in zip(password, password[1:], strict=False)}
    return steps <= {1} or steps <= {-1}


def _derived_from(password: str, *names: str) -> bool:
    """The password contains (or reverses) the username or the e-mail's local part."""
    flat = _alnum(password)
    for name in names:
        base = _alnum(name.split("@", 1)[0])
        if len(base) >= 3 and (base in flat or base[::-1] in flat):
            return True
    return False


def password_problem(password: str, *, username: str = "", email: str = "") -> str | None:
    """A human-readable reason to refuse a new password, or None when it is acceptable.

    Length, then the checks NIST SP 800-63B asks for: not a commonly used password, not
    repetitive or sequential characters, not derived from the account's own name.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"The password must have at least {MIN_PASSWORD_LENGTH} characters."
    if len(password) > 1024:
        return "The password is too long."
    if _is_monotonous(password):
        return "The password repeats too few characters; choose a less predictable one."
    if _is_common(password):
        return "This password is among the most commonly used ones; choose another."
    if _derived_from(password, username, email):
        return "The password must not contain your username or e-mail name."
    return None


def generate_password() -> str:
    """A password printed once to an admin; ~120 bits, no look-alike ambiguity issues in URLs."""
    return secrets.token_urlsafe(15)


def generate_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_for(secret_key: str, session_id: str) -> str:
    """The CSRF token of a session: bound to its id, so a token from another session is useless."""
    mac = hmac.new(secret_key.encode(), b"csrf:" + session_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def csrf_matches(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
