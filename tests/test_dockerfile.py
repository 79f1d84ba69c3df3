"""The image's install holds the whole node: what the Dockerfile copies builds a wheel with every
package ``pyproject.toml`` names and the ``pacsnode`` entry point's module.

There is no container engine on CI, so the image cannot be built; the same ``pip`` step can. The
image once copied only node, pipelines, models and web, so ``pacsnode`` (``app.cli``) and
everything importing ``core`` would have failed at start.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _copied_paths() -> list[str]:
    """The sources of the Dockerfile's ``COPY`` lines (each line's last word is the target)."""
    sources: list[str] = []
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    return sources


def test_the_dockerfile_copies_every_package_and_they_build_into_one_wheel(
    tmp_path: Path,
) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    entry_module = pyproject["project"]["scripts"]["pacsnode"].split(":")[0]

    context = tmp_path / "image"
    context.mkdir()
    for source in _copied_paths():
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, context / source)
    missing = [p for p in packages if not (context / p).is_dir()]
    assert not missing, f"the Dockerfile does not copy {missing}"

    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "wheel"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert entry_module.replace(".", "/") + ".py" in names
    for package in packages:
        assert f"{package}/__init__.py" in names, f"{package} is not in the image's install"
