"""Several receiver processes on one port: one Python process is CPU-bound at roughly one core,
so the pool is how the receiver scales with associations (docs/performance.md §3).

The parent binds and listens; every child accepts from that one socket, a less loaded child first
(``scp._Server``), so associations spread evenly — the kernel's SO_REUSEPORT hash, used before,
could put four associations in one process. Each child owns its ``Database`` and group committer.
On PostgreSQL they meet in the database (row locks). On SQLite one more process, the append
service (``append_service``), commits the steady-state rows of all of them, so that they do not
take turns on one file's write lock and read each other's commits back into their caches.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import send_handle
from typing import Any

from core.config import Settings
from node.db.engine import Database, is_sqlite
from node.ingest.append_service import serve_appends
from node.ingest.scp import LISTEN_BACKLOG, PoolCounts, PoolSeat, start_receiver

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 60.0
SUPERVISE_S = 0.5  # how often the parent looks for a receiver process that died
RESTART_BACKOFF_S = 5.0  # at most one restart per process slot in this time (a crash loop)


def _child(settings: Settings, ready: Any, seat: PoolSeat) -> None:
    """Child process entry: serve until SIGTERM, then finish running associations."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s receiver[{seat.index}] %(name)s: %(message)s")  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    seat.listener.setblocking(False)  # siblings race for each connection; the losers wait again
    db = Database(settings.effective_database_url)
    try:
        handle = start_receiver(settings, db, seat=seat)
    except OSError as exc:
        ready.put((seat.index, f"error: {exc}"))
        raise
    ready.put((seat.index, "ready"))
    try:
        stop.wait()
    finally:
        handle.stop()
        db.dispose()


def _append_service(
    settings: Settings, ready: Any, index: int, pipes: list[Connection], attach: Connection
) -> None:
    """Append service entry: its receivers stop first; it ends when the last one closed its
    pipe and the pool closed ``attach`` (SIGTERM and SIGINT are ignored so that it outlives
    them)."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s append-service %(name)s: %(message)s")  # fmt: skip
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ready.put((index, "ready"))
    serve_appends(settings, pipes, attach)


@dataclass
class PoolHandle:
    """The running pool. A receiver process that dies (killed for memory, a crash in a C
    extension: any end but a clean exit) is started again in its slot by a supervising thread:
    without it the pool would lose capacity, and with every process gone the node would stop
    receiving while its console still answered. On SQLite the new process gets a new pipe to
    the append service (its service end handed over ``_attach``); where the service is gone, it
    appends its own rows under the pool's file lock, as receivers already do then."""

    port: int
    processes: list[BaseProcess]  # the receivers, by slot
    _listener: socket.socket
    appender: BaseProcess | None = None  # the append service (SQLite)
    _counts: PoolCounts | None = None  # each receiver's connections (shared memory)
    _start: Callable[[int], BaseProcess] | None = None  # a receiver process for a slot, started
    _attach: Connection | None = None  # hands the append service a restarted receiver's pipe
    restarts: int = 0  # receiver processes started again after they died
    _stopped: bool = field(default=False, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _ended: threading.Event = field(default_factory=threading.Event, init=False)
    _supervisor: threading.Thread | None = field(default=None, init=False)

    def supervise(self) -> None:
        """Start the thread that starts dead receivers again (until ``stop``)."""
        self._supervisor = threading.Thread(target=self._supervise, name="pacsnode-pool-supervisor",
                                            daemon=True)  # fmt: skip
        self._supervisor.start()

    def _supervise(self) -> None:
        restarted_at = [-RESTART_BACKOFF_S] * len(self.processes)
        while not self._ended.wait(SUPERVISE_S):
            for index, process in enumerate(self.processes):
                # exit code 0: it was asked to stop (a Ctrl-C reaches the whole process group
                # before the parent's ``stop``), not a death to repair
                if process.is_alive() or process.exitcode == 0:
                    continue
                if time.monotonic() - restarted_at[index] < RESTART_BACKOFF_S:
                    continue
                restarted_at[index] = time.monotonic()
                with self._lock:
                    if self._stopped or self._start is None:
                        return
                    log.error("receiver process %d (pid %s) ended with exit code %s; starting "
                              "another in its place", index, process.pid, process.exitcode)  # fmt: skip
                    if self._counts is not None:
                        self._counts.clear(index)
                    try:
                        self.processes[index] = self._start(index)
                    except Exception:  # noqa: BLE001 - out of memory or descriptors: try again
                        log.exception("could not start receiver process %d; trying again in "
                                      "%.0f s", index, RESTART_BACKOFF_S)  # fmt: skip
                        continue
                    self.restarts += 1

    def alive(self) -> int:
        """Receiver processes alive (the append service not counted)."""
        return sum(1 for p in self.processes if p.is_alive())

    @property
    def answering(self) -> bool:
        """Some receiver process lives to answer (the receiver heartbeat's check: the parent's
        socket accepts connections into its backlog even when none does)."""
        return not self._stopped and self.alive() > 0

    def connections(self) -> list[int]:
        """Open connections per receiver process, as each process last counted them."""
        return list(self._counts.connections) if self._counts is not None else []

    def associations(self) -> list[int]:
        """Associations per receiver process (their sum is held to ``max_associations``)."""
        return list(self._counts.associations) if self._counts is not None else []

    def pending(self) -> list[int]:
        """Connections not associated yet per receiver process (their sum is held to
        ``max_pending_connections``)."""
        return list(self._counts.pending) if self._counts is not None else []

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM every receiver (they stop accepting and drain), then kill stragglers; then
        the append service, which leaves once every receiver closed its pipe."""
        with self._lock:  # no process is started again from here on
            if self._stopped:
                return
            self._stopped = True
        self._ended.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout)
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                process.terminate()
        for process in self.processes:
            _join(process, timeout)
        if self._attach is not None:  # no more receivers: the service leaves after the last
            self._attach.close()
        if self.appender is not None:
            _join(self.appender, timeout)
        self._listener.close()


def _join(process: BaseProcess, timeout: float) -> None:
    process.join(timeout)
    if process.is_alive():
        log.warning("%s (pid %s) did not stop in %.0f s; killing", process.name, process.pid,
                    timeout)  # fmt: skip
        process.kill()
        process.join(5)


def _service_pipe(
    context: Any, attach: Connection | None, service: BaseProcess | None
) -> Connection | None:
    """A new pipe to the append service for a receiver started again, its service end handed
    over ``attach``; None where there is no service or it is gone (the receiver then appends
    its own rows)."""
    if attach is None or service is None or not service.is_alive() or service.pid is None:
        return None
    receiver_end, service_end = context.Pipe()
    try:
        send_handle(attach, service_end.fileno(), service.pid)
    except OSError as exc:
        log.warning("append service cannot take a new pipe (%s): the restarted receiver appends "
                    "its own rows", exc)  # fmt: skip
        receiver_end.close()
        return None
    finally:
        service_end.close()  # the service has its own copy (or none)
    return receiver_end


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def start_receiver_pool(settings: Settings, processes: int | None = None) -> PoolHandle:
    """Start ``settings.receiver_processes`` (or ``processes``) children on one port, and on
    SQLite the append service; wait until all are ready. The database must already be migrated."""
    count = processes or settings.receiver_processes
    listener = _listen(settings.dicom_host, settings.dicom_port)
    port = int(listener.getsockname()[1])
    child_settings = settings.model_copy(update={"dicom_port": port})
    context = mp.get_context("spawn")
    ready = context.Queue()
    counts = PoolCounts.shared(context, count)
    service_ends: list[Connection] = []
    receiver_ends: list[Connection | None] = [None] * count
    if count > 1 and is_sqlite(settings.effective_database_url):
        for index in range(count):
            receiver_ends[index], service_end = context.Pipe()
            service_ends.append(service_end)
    starting: list[BaseProcess] = []
    children: list[BaseProcess] = []
    appender = None
    attach: Connection | None = None
    if service_ends:
        attach, service_attach = context.Pipe()  # duplex: a Unix socket pair, which passes fds
        appender = context.Process(target=_append_service,
                                   args=(child_settings, ready, count, service_ends, service_attach),
                                   name="pacsnode-append-service", daemon=True)  # fmt: skip
        appender.start()
        service_attach.close()
        starting.append(appender)

    def start_child(index: int, appends: Connection | None = None) -> BaseProcess:
        seat = PoolSeat(listener, counts, index, appends)
        process = context.Process(target=_child, args=(child_settings, ready, seat),
                                  name=f"pacsnode-receiver-{index}", daemon=True)  # fmt: skip
        process.start()
        return process

    def restart_child(index: int) -> BaseProcess:
        appends = _service_pipe(context, attach, appender)
        try:
            return start_child(index, appends)
        finally:
            if appends is not None:  # the child holds it now
                appends.close()

    for index in range(count):
        process = start_child(index, receiver_ends[index])
        children.append(process)
        starting.append(process)
    for end in [*service_ends, *receiver_ends]:  # the children hold them now: EOF when they end
        if end is not None:
            end.close()
    handle = PoolHandle(port=port, processes=children, _listener=listener, appender=appender,
                        _counts=counts, _start=restart_child, _attach=attach)  # fmt: skip
    waiting = set(range(len(starting)))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while waiting:
        try:
            index, state = ready.get(timeout=0.2)
        except queue.Empty:
            dead = [p.name for p in starting if p.exitcode is not None]
            if dead or time.monotonic() > deadline:
                handle.stop(5)
                why = f"{', '.join(dead)} exited" if dead else "timed out"
                raise RuntimeError(f"receiver pool did not start: {why}") from None
            continue
        if state != "ready":
            handle.stop(5)
            raise RuntimeError(f"receiver child {index} failed: {state}")
        waiting.discard(index)
    handle.supervise()
    log.info("receiver pool: %d processes on port %d%s", count, port,
             ", rows appended by one service process (SQLite)" if appender else "")  # fmt: skip
    return handle
