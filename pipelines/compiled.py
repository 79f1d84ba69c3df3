"""numba compilation of the node's per-voxel loops: one place that decides how a kernel is built.

Why numba: a random-weight or poorly trained model leaves a hundred components over half of a
26 M voxel CT, and numpy's way through such a mask is several passes with volume-sized index
temporaries; a compiled loop reads each voxel once. numba is imported only when a kernel is first
used, so processes that never post-process or measure (the console, the receiver) do not load it.
A process that does pays about 130 MB of RSS once (numba and LLVM) and, while numba's on-disk cache
is cold, about a second of compiling per kernel and array type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def compile_kernel(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` compiled without the GIL, cached on disk where numba finds a writable place
    (next to the module, else the user's cache folder), else compiled once per process (a
    read-only install whose user has no home)."""
    import numba

    try:
        return numba.njit(cache=True, nogil=True)(function)  # type: ignore[no-any-return]
    except RuntimeError:  # "no locator available": nowhere to cache
        return numba.njit(nogil=True)(function)  # type: ignore[no-any-return]
