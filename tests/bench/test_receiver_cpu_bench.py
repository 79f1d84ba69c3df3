"""bench/receiver_cpu.py: the CPU budget of the node's receiver and of Orthanc, measured in turns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow
@pytest.mark.integration
def test_cpu_budget_of_the_node_and_orthanc(tmp_path: Path) -> None:
    """Every receiver's row (two pool sizes and Orthanc) carries a rate, the receiver's and the
    sender's CPU per instance and the busy cores; the ceiling is the cores over the busy CPU per
    instance, and the ratio is against Orthanc's rate."""
    venv_bin = str(Path(sys.executable).parent)
    path = ":".join(p for p in os.environ["PATH"].split(":") if p != venv_bin)  # DCMTK's storescu
    run = subprocess.run(
        [sys.executable, str(BENCH / "receiver_cpu.py"), "--associations", "4", "--peer",
         "--processes", "1", "2",
         "--count", "40", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": path},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("40 x 64x64 16-bit over 4 association(s)")
    rows = {}
    for line in lines[2:5]:  # the receiver's name in 24 columns, then the numbers
        rate, ratio, recv, system, send, busy, _iowait, busy_ms, ceiling = line[24:].split()
        rows[line[:24].strip()] = (float(rate), ratio, float(recv), float(system), float(send),
                                   float(busy), float(busy_ms), float(ceiling))  # fmt: skip
    assert list(rows) == ["pacsnode (1 process)", "pacsnode (2 processes)", "Orthanc 1.10"]
    node = rows["pacsnode (1 process)"]
    orthanc = rows["Orthanc 1.10"]
    for rate, _, recv, system, send, busy, busy_ms, ceiling in rows.values():
        # system CPU is counted in 10 ms clock ticks: 40 instances can read 0 (seen in CI)
        assert rate > 0 and 0 <= system <= recv and recv > 0 and send > 0 and busy > 0
        assert ceiling == pytest.approx((os.cpu_count() or 1) / busy_ms * 1e3, rel=0.01, abs=1)
    assert orthanc[1] == "1.00x"
    assert "GB free memory before the first run" in lines[5]
    assert node[1] == f"{node[0] / orthanc[0]:.2f}x"
