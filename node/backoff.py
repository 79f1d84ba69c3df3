"""Retry backoff shared by the job queue and the delivery dispatcher.

Both queues retry a failed item after ``base * 2^(attempts-1)`` seconds, capped, with a random
spread so that items which failed together (a peer that went down) do not all retry in the same
instant. One function, so the two queues cannot drift apart.
"""

from __future__ import annotations

import random


def backoff_delay(
    attempts: int,
    base_s: float,
    max_s: float,
    jitter: float,
    rng: random.Random | None = None,
) -> float:
    """Seconds before the next attempt after ``attempts`` failures: base * 2^(n-1), capped at
    ``max_s``, times a factor drawn from ``1 ± jitter`` (``rng`` defaults to the module's)."""
    delay = min(max_s, base_s * (2 ** max(0, attempts - 1)))
    return max(0.0, delay * (1.0 + (rng or random).uniform(-jitter, jitter)))
