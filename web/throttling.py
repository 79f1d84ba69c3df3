"""Who may try a password now: the per-account and per-address progressive delays together.

Every form that checks a password (login, changing one's own password) and every form that sends
mail (forgot password) asks :meth:`Guard.wait` first and reports failures with
:meth:`Guard.failed`. The account key is the name typed, whether or not such a user exists, so the
answer never tells whether an account does. The address is the real client address: uvicorn's
proxy middleware rewrites it from ``X-Forwarded-For`` only for peers in ``web.trusted_proxies``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import Request
from sqlalchemy.orm import Session

from core.config import WebSettings
from node.db.repositories import throttle
from node.db.repositories.throttle import ThrottleRule, account_key, address_key


def client_address(request: Request) -> str:
    """The caller's address, already corrected for trusted proxies (``web.trusted_proxies``)."""
    return request.client.host if request.client else "unknown"


@dataclass(frozen=True)
class Guard:
    account: ThrottleRule
    address: ThrottleRule

    @classmethod
    def from_settings(cls, web: WebSettings) -> Guard:
        delay = timedelta(seconds=web.login_max_delay_s)
        return cls(
            account=ThrottleRule(free=web.login_max_failures, max_delay=delay),
            address=ThrottleRule(free=web.login_address_max_failures, max_delay=delay),
        )

    def wait(self, session: Session, *, username: str | None, address: str, now: datetime) -> int:
        """Whole seconds the caller must still wait (0: the attempt may be checked)."""
        keys = [address_key(address)] + ([account_key(username)] if username is not None else [])
        longest = max(throttle.wait_for(session, key, now) for key in keys)
        return math.ceil(longest.total_seconds())

    def failed(
        self, session: Session, *, username: str | None, address: str, now: datetime
    ) -> None:
        throttle.purge(session, now, max(self.account.forget_after, self.address.forget_after))
        throttle.record_failure(session, address_key(address), self.address, now)
        if username is not None:
            throttle.record_failure(session, account_key(username), self.account, now)

    def succeeded(self, session: Session, *, username: str) -> None:
        """A correct password clears the account's count (never the address's: one valid account
        must not buy an address a fresh budget for spraying others)."""
        throttle.clear(session, account_key(username))


def wait_message(seconds: int) -> str:
    return f"Too many failed attempts; try again in {seconds} s."
