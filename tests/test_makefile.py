"""The Makefile's test command: ``make test`` is the short loop (the tests marked slow left out, and
said so), ``make test SLOW=1`` and CI's ``.ci/run`` the full set. A change that made CI skip the
slow tests, or the short loop run them silently, fails here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pytest_command(*make_args: str) -> str:
    """The pytest line ``make test`` would run (``make -n``: printed, nothing run). Without the
    variables a ``make test SLOW=1`` running this test passes down to every make below it."""
    env = {
        k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "SLOW"}
    }
    printed = subprocess.run(
        ["make", "-n", "test", *make_args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line for line in printed.splitlines() if "/pytest" in line]
    assert len(lines) == 1, printed
    return lines[0]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_leaves_out_the_slow_tests_and_slow_1_runs_them() -> None:
    assert '-m "not slow"' in _pytest_command()
    assert " -m " not in _pytest_command("SLOW=1")


def test_ci_runs_the_full_set(tmp_path: Path) -> None:
    fake_make = tmp_path / "make"  # records what .ci/run asks of make, runs nothing
    fake_make.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "args"}\n')
    fake_make.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    subprocess.run([str(ROOT / ".ci" / "run")], env=env, check=True)
    assert (tmp_path / "args").read_text().split() == ["test", "SLOW=1"]


def test_the_summary_says_what_was_left_out() -> None:
    slow_file = "tests/web/routes/test_workers.py"  # one of its tests is marked slow
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
         "--collect-only", slow_file],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert "tests marked slow were left out: `make test SLOW=1`" in run.stdout, run.stdout
