"""A private RabbitMQ broker for tests: its own node name, ports, epmd and data directory.

The machine's own RabbitMQ (5672) is never touched; this one can be restarted and killed by the
test that owns it. Started from Debian's ``rabbitmq-server`` package (the server script in
``/usr/lib/rabbitmq/bin``, run as the current user with HOME pointing at the test's folder so the
Erlang cookie is private too).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def available() -> bool:
    return SERVER.exists() and shutil.which("epmd") is not None


class PrivateRabbitMQ:
    """``start``/``stop``/``restart`` one broker; ``url`` is its AMQP URL (guest on loopback)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.nodename = f"pacsnode{self.port}@localhost"
        self._server: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.base),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def start(self, timeout: float = 120) -> PrivateRabbitMQ:
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        env = self._env()
        if self._epmd is None:  # our own epmd, on our own port, stopped with the broker
            self._epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        log = (self.base / "server.out").open("ab")
        self._server = subprocess.Popen(
            [str(SERVER)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited early:\n{self.output()[-3000:]}")
            if "Starting broker... completed" in self.output():
                return self
            time.sleep(0.5)
        raise TimeoutError(f"private RabbitMQ not up after {timeout} s:\n{self.output()[-3000:]}")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM to the broker's process group (a clean RabbitMQ shutdown), then wait."""
        if self._server is None:
            return
        if self._server.poll() is None:
            os.killpg(self._server.pid, signal.SIGTERM)
            try:
                self._server.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self._server.pid, signal.SIGKILL)
                self._server.wait()
        self._server = None

    def restart(self) -> None:
        self.stop()
        (self.base / "server.out").open("a").write("\n--- restart ---\n")
        self._truncate_marker()
        self.start()

    def _truncate_marker(self) -> None:
        text = self.output().replace("Starting broker... completed", "Starting broker... (old)")
        (self.base / "server.out").write_text(text)

    def close(self) -> None:
        self.stop()
        if self._epmd is not None:
            self._epmd.terminate()
            self._epmd.wait(timeout=10)
            self._epmd = None

    def output(self) -> str:
        path = self.base / "server.out"
        return path.read_text(errors="replace") if path.exists() else ""


def serve_private(base: Path) -> Iterator[PrivateRabbitMQ]:
    """The body of a module-scoped ``broker`` fixture: skip without the Debian package (fail
    in CI), start one broker, close it after the module."""
    import pytest

    if not available():
        if os.environ.get("CI"):
            pytest.fail("rabbitmq-server is not installed (Debian package rabbitmq-server)")
        pytest.skip("rabbitmq-server is not installed")
    server = PrivateRabbitMQ(base).start()
    try:
        yield server
    finally:
        server.close()
