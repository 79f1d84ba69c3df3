"""A worker's malloc keeps freed memory for reuse: a study's large arrays are not faulted in anew.

Each check runs in a fresh Python process: the thresholds are process-wide, and pytest's own
process must keep glibc's defaults (other tests measure its memory).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.config import Settings
from pipelines.allocator import keep_freed_memory

ROOT = Path(__file__).resolve().parents[2]
glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# allocate, fill and free a 64 MB array (the size of a CT's labels or probabilities) three
# times and count the page faults of the last round; numpy's huge-page advice is off so that
# every 4 KiB page counts
_ROUNDS = """
import json, resource, sys
import numpy as np
from pipelines.allocator import keep_freed_memory
applied = keep_freed_memory(int(sys.argv[1]))
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    array = np.ones(64 << 17)  # 64 MiB of float64
    del array
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _rounds(keep_mb: int) -> dict[str, object]:
    run = subprocess.run(
        [sys.executable, "-c", _ROUNDS, str(keep_mb)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"NUMPY_MADVISE_HUGEPAGE": "0", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@glibc_only
def test_a_freed_array_is_reused_without_page_faults() -> None:
    kept = _rounds(256)
    assert kept["applied"] is True
    *_, last = kept["faults"]  # type: ignore[misc]
    assert kept["faults"][0] > 16_000, kept  # the first round faults the 16,384 pages in
    assert last < 200, kept  # the last reuses them


@glibc_only
def test_with_glibcs_defaults_every_round_faults_the_array_in_again() -> None:
    """The reason for the setting: above 32 MB glibc maps each allocation afresh."""
    default = _rounds(0)
    assert default["applied"] is False
    *_, last = default["faults"]  # type: ignore[misc]
    assert last > 16_000, default


def test_zero_keeps_the_defaults_and_a_negative_size_is_refused() -> None:
    assert keep_freed_memory(0) is False
    with pytest.raises(ValueError, match="worker_malloc_keep_mb"):
        keep_freed_memory(-1)
    with pytest.raises(ValidationError, match="worker_malloc_keep_mb"):
        Settings(worker_malloc_keep_mb=-5)
    assert Settings().worker_malloc_keep_mb == 512
