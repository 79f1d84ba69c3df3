"""The resident memory a block of code needs at its peak, as a user watching the process sees it.

One sampler for the memory tests and the inference benchmark (``bench/inference.py`` imports it),
so that both measure the same thing: RSS every 2 ms from a daemon thread, since a peak between two
samples taken around the block would be missed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class RssPeak:
    """RSS in bytes when sampling began and the highest RSS seen until it stopped."""

    baseline: int
    peak: int

    @property
    def peak_mb(self) -> float:
        """The highest RSS, in MB."""
        return self.peak / 2**20

    @property
    def rise_mb(self) -> float:
        """How far the highest RSS rose above the baseline, in MB."""
        return (self.peak - self.baseline) / 2**20


@contextlib.contextmanager
def rss_peak(interval: float = 0.002) -> Iterator[RssPeak]:
    """Sample this process's RSS every ``interval`` seconds while the block runs; the yielded
    :class:`RssPeak` holds the highest value once the block has left."""
    import psutil

    process = psutil.Process()
    baseline = process.memory_info().rss
    measured = RssPeak(baseline, baseline)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            measured.peak = max(measured.peak, process.memory_info().rss)
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield measured
    finally:
        stop.set()
        sampler.join()
