"""Keep freed memory in a worker process for the next allocation, instead of handing it back.

A study's arrays are large and short-lived: a 3D network's sliding-window activations, the
probabilities mapped back to a 100 x 512² CT (105 MB), its labels (105 MB), the masks. glibc's
malloc serves allocations above its mmap threshold (128 KB, raised as blocks are freed up to at
most 32 MB) with fresh mappings and unmaps them when freed, and returns the top of its heap to the
kernel once more than its trim threshold is free. Every study then faults its memory in again, 4 KiB
at a time: 30,000-90,000 page faults per run of the benchmark UNet 3D, bare model and node alike
(``getrusage``), 10-25 % of their CPU time. With both thresholds raised, blocks stay in malloc's
heap and are reused: the same runs fault a few pages (docs/performance.md §6).

The price is resident memory: a worker keeps what its largest study needed (up to the setting)
instead of returning it between studies. ``worker_malloc_keep_mb: 0`` keeps glibc's defaults.
Only glibc has these knobs (``mallopt``); elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def keep_freed_memory(keep_mb: int) -> bool:
    """Serve allocations of up to ``keep_mb`` MiB from malloc's heap and keep up to that much
    freed memory there (both thresholds); True if glibc took the settings. Process-wide: call
    it once, in a process that runs pipelines."""
    if keep_mb < 0:
        raise ValueError(f"worker_malloc_keep_mb must be 0 or more, not {keep_mb}")
    libc = _libc()
    if keep_mb == 0 or libc is None:
        return False
    size = keep_mb << 20
    return bool(libc.mallopt(M_MMAP_THRESHOLD, size)) and bool(libc.mallopt(M_TRIM_THRESHOLD, size))
