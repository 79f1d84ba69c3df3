"""Wall time per pipeline stage (decode, VOI, resampling, inference, mapping back, …), on request.

The node's fixed cost is what ``Pipeline.run`` spends outside the networks; to see where, the
stages mark themselves with :func:`stage`, and a caller that wants the breakdown (the inference
benchmark's ``--breakdown``) wraps a run in :func:`collect_stages`. Without a collector a mark
costs one global read, so production runs pay nothing for it.

Times are exclusive: a stage nested in another (inference inside a task's loop) is taken out of
the outer one, so the stages of one run add up to its wall time. Stages marked in several threads
(members on different devices) add up their threads' times.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_collector: dict[str, float] | None = None
_local = threading.local()  # per thread: the open stages


class _Open:
    """A stage being timed: when it started and how long the stages inside it took."""

    __slots__ = ("children", "start")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.children = 0.0


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark a block of work as stage ``name`` (a no-op unless :func:`collect_stages` is on)."""
    if _collector is None:
        yield
        return
    stack: list[_Open] = _local.__dict__.setdefault("stack", [])
    frame = _Open()
    stack.append(frame)
    try:
        yield
    finally:
        stack.pop()
        total = time.perf_counter() - frame.start
        if stack:
            stack[-1].children += total
        collector = _collector
        if collector is not None:
            with _lock:
                collector[name] = collector.get(name, 0.0) + total - frame.children


@contextmanager
def collect_stages() -> Iterator[dict[str, float]]:
    """Collect stage times (seconds by name, in first-seen order) while the block runs.

    One collector at a time (it is process-wide, so member threads report to it too).
    """
    global _collector
    if _collector is not None:
        raise RuntimeError("stage times are already being collected")
    times: dict[str, float] = {}
    _collector = times
    try:
        yield times
    finally:
        _collector = None
