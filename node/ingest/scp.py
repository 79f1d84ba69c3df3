"""The DICOM listener: C-ECHO and C-STORE for every storage SOP class, in every transfer syntax.

Instances are accepted as sent (no transcoding; the sender's preferred transfer syntax wins).
Association checks: the called AE title must be ours (A-ASSOCIATE-RJ reason 7, "called AE title not
recognised"); with ``allowed_callers`` the calling AE title, optionally bound to a host, must be
listed (reason 3, "calling AE title not recognised"); at most ``max_associations`` at once
(transient rejection, local limit exceeded).

Each connection is served start to finish by its own thread (``node.ingest.association``); this
module is the accept loop around them. It bounds what peers can hold: at most
``max_pending_connections`` connections that have not associated yet (more are closed at once),
and a watchdog thread that closes any connection past its deadline (``Connection.deadline``:
whole-phase deadlines, so a peer dripping one byte at a time cannot extend them). Speed
(docs/performance.md §2): unlimited maximum PDU, each PDU read with one receive, TCP_NODELAY on every
accepted socket and TCP_QUICKACK re-armed after every receive (senders that keep Nagle on do not
wait ~40 ms on delayed ACKs), and TLS handshakes done in the connection's own thread so a silent
client cannot stall accepts.
"""

from __future__ import annotations

import logging
import select
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as MultiprocessingConnection
from typing import Any

from sqlalchemy.orm import configure_mappers

from core.config import CallerAllowEntry, Settings
from node.db.engine import Database
from node.db.repositories.instance_appender import InstanceAppender
from node.ingest.append_service import RemoteAppender
from node.ingest.association import Connection
from node.ingest.association import caller_allowed as caller_allowed
from node.ingest.contexts import SUPPORTED_CONTEXTS as SUPPORTED_CONTEXTS
from node.ingest.contexts import VERIFICATION as VERIFICATION
from node.ingest.contexts import negotiate_contexts as negotiate_contexts
from node.ingest.contexts import supported_contexts as supported_contexts
from node.ingest.persist import GroupCommitter
from node.ingest.spool import remove_stale_temp_files
from node.overrides import REFRESH_S, Refreshing, settings_refresher

log = logging.getLogger(__name__)
WATCH_INTERVAL_S = 0.2
LISTEN_BACKLOG = 128
BALANCE_WAIT_S = 0.05  # how long a pool process with more connections than a sibling lets it accept


@dataclass(frozen=True)
class PoolCounts:
    """Each pool process's counts, in shared memory (a ``RawArray`` of int per kind, one slot
    per process, each written only by its process): open connections (the even spread, and
    whether a process is alone), associations and connections not associated yet
    (``max_associations`` and ``max_pending_connections`` hold for the pool, :func:`admit`)."""

    connections: Any
    associations: Any
    pending: Any

    @classmethod
    def shared(cls, context: Any, processes: int) -> PoolCounts:
        """Zeroed counts for ``processes`` processes, from a multiprocessing ``context``."""
        return cls(*(context.RawArray("i", processes) for _ in range(3)))

    def clear(self, index: int) -> None:
        """Process ``index`` died: its connections died with it, none counts any more."""
        for counts in (self.connections, self.associations, self.pending):
            counts[index] = 0


@dataclass
class PoolSeat:
    """A receiver's place in a pool (``receiver_pool``): the pool's listening socket, shared by
    all its processes; every process's counts and its own ``index`` there; the pipe to the
    append service (SQLite), if any."""

    listener: socket.socket
    counts: PoolCounts
    index: int
    appends: MultiprocessingConnection | None = None

    @property
    def processes(self) -> int:
        return len(self.counts.connections)

    def alone(self) -> bool:
        """No other process of the pool holds a connection."""
        connections = self.counts.connections
        return sum(connections) == connections[self.index]


def admit(counts: Any, index: int, limit: int) -> bool:
    """Raise process ``index``'s count in ``counts`` (one per pool process, shared memory) unless
    the pool's total would pass ``limit``.

    Each process writes only its own count and checks the sum after raising it: two processes
    admitting at the same moment may both refuse at the limit (a sender retries a transient
    rejection) but never both accept past it, and no lock is shared that a killed process could
    leave held."""
    counts[index] += 1
    if sum(counts) > limit:
        counts[index] -= 1
        return False
    return True


class _Server(socketserver.ThreadingTCPServer):
    """Accept loop with one thread per connection, off-thread TLS handshakes, a bound on
    connections not yet associated, and the deadline watchdog.

    In a pool every process accepts from the one listening socket (non-blocking: the processes
    that lose the race for a connection go back to waiting). A process holding more connections
    than the least loaded one lets it win: it waits up to ``BALANCE_WAIT_S`` for a sibling to
    accept, and takes the connection itself only if nobody did. Without that, four associations
    could all land in one process, as they did with SO_REUSEPORT's hash (docs/performance.md
    §3)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, settings: Settings, db: Database, ssl_context: ssl.SSLContext | None,
                 seat: PoolSeat | None) -> None:  # fmt: skip
        self.settings, self.db = settings, db
        self.ssl_context, self.seat = ssl_context, seat
        self.allowed_callers: list[CallerAllowEntry] = list(settings.allowed_callers)
        self.active_associations: list[Connection] = []
        self.connections: set[Connection] = set()
        self.pending = 0
        self.held = 0  # connections accepted and not yet closed (``seat.counts.connections``)
        self._slots = threading.Lock()
        self._watch_stop = threading.Event()
        super().__init__(
            (settings.dicom_host, settings.dicom_port),
            socketserver.BaseRequestHandler,
            bind_and_activate=seat is None,
        )
        # is a connection still waiting on the pool's socket (poll, not select(): no limit on
        # the descriptor's number); registered once, asked on every accept
        self._backlog = select.poll()
        if seat is not None:  # the pool's socket, already listening
            self.socket.close()
            self.socket = seat.listener
            self.server_address = seat.listener.getsockname()
            self._backlog.register(self.socket, select.POLLIN)
        self._watchdog = threading.Thread(target=self._watch, name="pacsnode-dicom-deadlines",
                                          daemon=True)  # fmt: skip
        self._watchdog.start()

    def get_request(self) -> tuple[Any, Any]:
        """Accept (``BlockingIOError`` when a pool sibling took the connection: the accept loop
        ignores it), after letting a less loaded sibling go first."""
        seat = self.seat
        if seat is not None:
            deadline = time.monotonic() + BALANCE_WAIT_S
            while self.held > min(seat.counts.connections) and time.monotonic() < deadline:
                time.sleep(0.002)
                if not self._backlog.poll(0):
                    raise BlockingIOError("a less loaded pool process took the connection")
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        self._count(+1)  # from here on the accept loop ends it with ``shutdown_request``
        return client, address

    def shutdown_request(self, request: Any) -> None:
        """Every accepted connection ends here (refused, served, or failed)."""
        super().shutdown_request(request)
        self._count(-1)

    def _count(self, change: int) -> None:
        with self._slots:
            self.held += change
            if self.seat is not None:
                self.seat.counts.connections[self.seat.index] = self.held

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse (close) a connection while ``max_pending_connections`` have not associated (in
        a pool: in all its processes together)."""
        limit = self.settings.max_pending_connections
        with self._slots:
            seat = self.seat
            if self.pending >= limit or (
                seat is not None and not admit(seat.counts.pending, seat.index, limit)
            ):
                log.warning("connection from %s closed: already %d connections negotiating%s",
                            client_address[0],
                            self.pending if seat is None else sum(seat.counts.pending),
                            "" if seat is None else " in the receiver pool")  # fmt: skip
                return False
            self.pending += 1
            return True

    def _not_pending(self) -> None:
        """One connection less negotiating (the caller holds ``_slots``)."""
        self.pending -= 1
        if self.seat is not None:
            self.seat.counts.pending[self.seat.index] -= 1

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's thread: socket options, then the association (TLS handshake
        included, under the association deadline)."""
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(self, request, client_address)
        except OSError as exc:
            with self._slots:
                self._not_pending()
            log.warning("connection from %s dropped before association: %s", client_address, exc)
            return
        with self._slots:
            self.connections.add(conn)
        try:
            conn.run()
        finally:
            self.leave_pending(conn)
            with self._slots:
                self.connections.discard(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("unexpected error serving %s", client_address)

    def leave_pending(self, conn: Connection) -> None:
        with self._slots:
            if conn.pending:
                conn.pending = False
                self._not_pending()

    def take_slot(self, conn: Connection) -> bool:
        """An association slot under ``max_associations``: of this process, and in a pool of
        all its processes together (:func:`admit`)."""
        limit = self.settings.max_associations
        with self._slots:
            if len(self.active_associations) >= limit:
                return False
            seat = self.seat
            if seat is not None and not admit(seat.counts.associations, seat.index, limit):
                return False
            self.active_associations.append(conn)
            return True

    def release_slot(self, conn: Connection) -> None:
        with self._slots:
            if conn in self.active_associations:
                self.active_associations.remove(conn)
                if self.seat is not None:
                    self.seat.counts.associations[self.seat.index] -= 1

    def _watch(self) -> None:
        """Close every connection past its deadline, a few times a second."""
        while not self._watch_stop.wait(WATCH_INTERVAL_S):
            now = time.monotonic()
            with self._slots:
                connections = list(self.connections)
            for conn in connections:
                conn.expire_if_late(now)

    def stop_watchdog(self) -> None:
        self._watch_stop.set()
        self._watchdog.join(5)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.tls.cert_file), str(settings.tls.key_file))
    if settings.tls.ca_file is not None:
        context.load_verify_locations(cafile=str(settings.tls.ca_file))
    if settings.tls.require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class ReceiverHandle:
    """A running listener; ``stop`` refuses new associations and lets running ones finish."""

    port: int
    server: _Server
    committer: GroupCommitter
    stopping: threading.Event = field(default_factory=threading.Event)  # ends the allowlist thread
    accepting: threading.Thread | None = None  # the accept loop's thread
    _stopped: bool = field(default=False, init=False)

    @property
    def active_associations(self) -> int:
        return len(self.server.active_associations)

    @property
    def answering(self) -> bool:
        """The accept loop runs (the receiver heartbeat's check)."""
        return not self._stopped and self.accepting is not None and self.accepting.is_alive()

    def stop(self, timeout: float = 30) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        self.server.shutdown()  # stops the accept loop ...
        self.server.server_close()  # ... and closes the listening socket: new connections refused
        deadline = time.monotonic() + timeout
        while self.server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in list(self.server.active_associations):
            log.warning(
                "aborting association from %r still open after %.0f s", assoc.calling_ae, timeout
            )
            assoc.abort()
        self.server.stop_watchdog()
        self.committer.stop(timeout)


def start_receiver(
    settings: Settings, db: Database, *, seat: PoolSeat | None = None
) -> ReceiverHandle:
    """Start listening (non-blocking) on ``settings.dicom_host``/``dicom_port`` (0: any free), or
    on the pool's socket (``seat``)."""
    configure_mappers()  # once, here: not ~0.3 s inside the first instance's commit
    # receivers of one pool take turns on SQLite (a lone one needs no flock), and send their
    # steady-state rows to the pool's append service when it has one
    processes = seat.processes if seat is not None else 1
    appender = None
    if seat is not None and seat.appends is not None:
        appender = RemoteAppender(seat.appends, InstanceAppender(db), seat.alone)
    # the console's allowlist (database) from the first association on, not the YAML's alone
    allowlist = settings_refresher(settings, db)
    allowed = list(allowlist.get().allowed_callers)
    committer = GroupCommitter(db, settings, processes=processes, appender=appender).start()
    try:
        server = _Server(settings, db, tls_context(settings), seat)
    except OSError:  # port taken, bad TLS files: leave nothing running behind
        committer.stop()
        raise
    server.allowed_callers = allowed
    handle = ReceiverHandle(port=int(server.server_address[1]), server=server, committer=committer)
    threading.Thread(target=_follow_allowlist, args=(server, allowlist, handle.stopping),
                     name="pacsnode-allowlist", daemon=True).start()  # fmt: skip
    threading.Thread(
        target=_clean_spool, args=(settings,), name="pacsnode-spool-clean", daemon=True
    ).start()
    thread = threading.Thread(
        target=server.serve_forever, name="pacsnode-dicom-accept", daemon=True
    )
    thread.start()
    handle.accepting = thread
    log.info("DICOM receiver %s listening on %s:%d%s", settings.ae_title, settings.dicom_host,
             handle.port, " (TLS)" if settings.tls else "")  # fmt: skip
    return handle


def _follow_allowlist(
    server: _Server, allowlist: Refreshing[Settings], stop: threading.Event
) -> None:
    """Apply the AE allowlist an admin edits in the console to new associations, in every
    receiver process (a pool's too), within ``REFRESH_S`` of the edit."""
    while not stop.wait(REFRESH_S):
        try:
            server.allowed_callers = list(allowlist.get().allowed_callers)
        except Exception:  # noqa: BLE001 - keep the listener on its last allowlist
            log.warning("could not refresh the AE allowlist", exc_info=True)


def _clean_spool(settings: Settings) -> None:
    removed = remove_stale_temp_files(settings.spool_dir)
    if removed:
        log.info("removed %d unacknowledged temp file(s) left by a stopped receiver", removed)


def run_receiver_forever(settings: Settings, db: Database, stop: threading.Event) -> None:
    """Serve until ``stop`` is set (the runtime sets it on SIGTERM), then stop gracefully."""
    handle = start_receiver(settings, db)
    try:
        stop.wait()
    finally:
        handle.stop()
