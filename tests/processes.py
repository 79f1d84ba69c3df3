"""Run pacsnode entry points as real processes for integration tests (what docker-compose runs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def node_env(
    data_dir: Path,
    database_url: str,
    dicom_port: int,
    web_port: int,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSNODE_")}
    env.update(
        PACSNODE_ENVIRONMENT="test",
        PACSNODE_DATA_DIR=str(data_dir),
        PACSNODE_DATABASE_URL=database_url,
        PACSNODE_DICOM_HOST="127.0.0.1",
        PACSNODE_DICOM_PORT=str(dicom_port),
        PACSNODE_WEB_HOST="127.0.0.1",
        PACSNODE_WEB_PORT=str(web_port),
        PACSNODE_MIN_FREE_DISK_MB="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


class NodeProcess:
    """``python -m app <args>`` with its output in a log file; stopped by SIGTERM or killed."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_dir: Path, name: str) -> None:
        self.args = args
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", *self.args],
            env=self.env,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; returns the exit code (kills after ``timeout``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return int(self.proc.returncode)

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_for_port(port: int, timeout: float = 60, proc: NodeProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.output()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")
