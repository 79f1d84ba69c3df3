"""The layer rule of docs/architecture.md, checked by import-linter with the contract in pyproject.toml.

Imports point down only: app > web > node > pipelines > models > core. The second test proves the
check can fail: the same contract on a copy of the tree with one deliberate upward import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

PACKAGES = ("core", "models", "pipelines", "node", "web", "app")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_layers_point_down_only() -> None:
    run = _lint_imports(PROJECT_ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 kept, 0 broken" in run.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(
            PROJECT_ROOT / package,
            tmp_path / package,
            ignore=lambda _d, names: (
                [n for n in names if not (n.endswith(".py") or "." not in n)] + ["__pycache__"]
            ),
        )
    domain = tmp_path / "core" / "domain.py"
    domain.write_text(
        domain.read_text() + "\nfrom node.db import orm  # deliberate upward import\n"
    )
    run = _lint_imports(tmp_path)
    assert run.returncode != 0
    assert "core.domain -> node.db" in run.stdout
