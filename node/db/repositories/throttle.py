"""Progressive delay after failed authentication attempts, per key, kept in the database.

A key names what is being guessed at or who is guessing (``account:<name>``, ``address:<ip>``).
The first ``free`` failures cost nothing; from then on each failure makes the next attempt wait
1, 2, 4 ... seconds up to ``max_delay``. Unlike a lockout, a delay cannot be turned into a denial of
service against the owner: an attacker who fails five times makes the owner wait a second, not five
minutes, and waiting it out gives the attacker no more guesses than the owner. State is in the
database so every web process enforces the same count and a restart does not reset it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from node.db.orm import AuthThrottle

_T = cast(Table, AuthThrottle.__table__)
_ENSURE_ROW = {
    "postgresql": pg_insert(_T).on_conflict_do_nothing(index_elements=["key"]),
    "sqlite": sqlite_insert(_T).on_conflict_do_nothing(index_elements=["key"]),
}


def account_key(username: str) -> str:
    """The key of an account name, whether or not such a user exists (no account enumeration)."""
    return "account:" + username.strip().lower()[:128]


def address_key(address: str) -> str:
    return "address:" + address[:128]


@dataclass(frozen=True)
class ThrottleRule:
    """How many failures are free, the longest delay, and when quiet failures are forgotten."""

    free: int
    max_delay: timedelta

    @property
    def forget_after(self) -> timedelta:
        # long enough that a patient guesser at the maximum delay keeps paying it
        return max(self.max_delay * 4, timedelta(minutes=15))

    def delay_after(self, failures: int) -> timedelta:
        if failures < self.free:
            return timedelta(0)
        seconds = 2.0 ** min(failures - self.free, 30)
        return min(timedelta(seconds=seconds), self.max_delay)


def wait_for(session: Session, key: str, now: datetime) -> timedelta:
    """How long ``key`` must still wait before its next attempt is even checked (zero: go ahead)."""
    row = session.get(AuthThrottle, key)
    if row is None or row.next_attempt_at is None or row.next_attempt_at <= now:
        return timedelta(0)
    return row.next_attempt_at - now


def record_failure(session: Session, key: str, rule: ThrottleRule, now: datetime) -> timedelta:
    """Count one failure for ``key`` (row locked, so concurrent failures all count); the delay
    the next attempt must wait is returned."""
    dialect = session.get_bind().dialect.name
    session.execute(_ENSURE_ROW[dialect].values(key=key, failures=0, last_failure_at=now))
    row = session.scalars(
        select(AuthThrottle)
        .where(AuthThrottle.key == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if now - row.last_failure_at > rule.forget_after:
        row.failures = 0
    row.failures += 1
    row.last_failure_at = now
    delay = rule.delay_after(row.failures)
    row.next_attempt_at = now + delay if delay else None
    return delay


def failures(session: Session, keys: Sequence[str]) -> dict[str, int]:
    """Failures counted for each of ``keys`` that has any (for the admin's user list)."""
    rows = session.scalars(select(AuthThrottle).where(AuthThrottle.key.in_(list(keys)))).all()
    return {row.key: row.failures for row in rows}


def clear(session: Session, key: str) -> bool:
    """Forget ``key``'s failures (a success, a reset link used, an admin's unlock); True if any."""
    return bool(session.execute(delete(AuthThrottle).where(AuthThrottle.key == key)).rowcount)  # type: ignore[attr-defined]


def purge(session: Session, now: datetime, older_than: timedelta) -> int:
    """Drop rows whose last failure is long past, so spraying many addresses cannot grow the table
    without bound."""
    result = session.execute(
        delete(AuthThrottle).where(AuthThrottle.last_failure_at < now - older_than)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
