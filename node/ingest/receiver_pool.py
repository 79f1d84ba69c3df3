"""Several receiver processes on one port (SO_REUSEPORT): one pynetdicom process is CPU-bound at
roughly one core, so the pool is how the receiver scales with associations (docs/performance.md §3).

The kernel spreads new connections over the children. Each child owns its ``Database`` and group
committer; they meet in the database (SQLite's write lock or PostgreSQL row locks). The parent
holds a bound, non-listening socket on the port so a port 0 request resolves to one port for all.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from core.config import Settings
from node.db.engine import Database
from node.ingest.scp import start_receiver

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 60.0


def _child(settings: Settings, ready: Any, index: int) -> None:
    """Child process entry: serve until SIGTERM, then finish running associations."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s receiver[{index}] %(name)s: %(message)s")  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    db = Database(settings.effective_database_url)
    try:
        handle = start_receiver(settings, db, reuse_port=True)
    except OSError as exc:
        ready.put((index, f"error: {exc}"))
        raise
    ready.put((index, "ready"))
    try:
        stop.wait()
    finally:
        handle.stop()
        db.dispose()


@dataclass
class PoolHandle:
    port: int
    processes: list[BaseProcess]
    _reservation: socket.socket
    _stopped: bool = field(default=False, init=False)

    def alive(self) -> int:
        return sum(1 for p in self.processes if p.is_alive())

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM every child (they stop accepting and drain), then kill stragglers."""
        if self._stopped:
            return
        self._stopped = True
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                process.terminate()
        for process in self.processes:
            process.join(timeout)
            if process.is_alive():
                log.warning(
                    "receiver child %s did not stop in %.0f s; killing", process.pid, timeout
                )
                process.kill()
                process.join(5)
        self._reservation.close()


def _reserve_port(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def start_receiver_pool(settings: Settings, processes: int | None = None) -> PoolHandle:
    """Start ``settings.receiver_processes`` (or ``processes``) children on one port; wait until
    every child listens. The database must already be migrated."""
    count = processes or settings.receiver_processes
    reservation = _reserve_port(settings.dicom_host, settings.dicom_port)
    port = int(reservation.getsockname()[1])
    child_settings = settings.model_copy(update={"dicom_port": port})
    context = mp.get_context("spawn")
    ready = context.Queue()
    children: list[BaseProcess] = []
    for index in range(count):
        process = context.Process(target=_child, args=(child_settings, ready, index),
                                  name=f"pacsnode-receiver-{index}", daemon=True)  # fmt: skip
        process.start()
        children.append(process)
    handle = PoolHandle(port=port, processes=children, _reservation=reservation)
    waiting = set(range(count))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while waiting:
        try:
            index, state = ready.get(timeout=0.2)
        except queue.Empty:
            dead = [p.name for p in children if p.exitcode is not None]
            if dead or time.monotonic() > deadline:
                handle.stop(5)
                why = f"{', '.join(dead)} exited" if dead else "timed out"
                raise RuntimeError(f"receiver pool did not start: {why}") from None
            continue
        if state != "ready":
            handle.stop(5)
            raise RuntimeError(f"receiver child {index} failed: {state}")
        waiting.discard(index)
    log.info("receiver pool: %d processes on port %d", count, port)
    return handle
