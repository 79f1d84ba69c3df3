"""The DICOM listener: C-ECHO and C-STORE for every storage SOP class, in every transfer syntax.

Instances are accepted as sent (no transcoding; the sender's preferred transfer syntax wins).
Association checks: the called AE title must be ours (A-ASSOCIATE-RJ reason 7, "called AE title not
recognised"); with ``allowed_callers`` the calling AE title, optionally bound to a host, must be
listed (reason 3, "calling AE title not recognised"); at most ``max_associations`` at once
(transient rejection, local limit exceeded).

Each connection is served start to finish by its own thread: read a PDU, act, answer — the
association's whole state lives in one ``_Association`` object (``node.ingest.upper_layer`` and
``node.ingest.dimse`` hold the codecs and say why this is not pynetdicom's acceptor). Speed
(docs/performance.md §2): unlimited maximum PDU, each PDU read into one buffer and the data set
handed to ``persist_instance`` as a view of it, TCP_NODELAY on every accepted socket and
TCP_QUICKACK re-armed after every receive (senders that keep Nagle on do not wait ~40 ms on
delayed ACKs), and TLS handshakes done in the connection's own thread so a silent client cannot
stall accepts.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from sqlalchemy.orm import configure_mappers

from core.config import CallerAllowEntry, Settings
from core.domain import Association, StoreStatus
from node.db.engine import Database
from node.db.repositories import receiver_stats
from node.ingest import dimse
from node.ingest import upper_layer as ul
from node.ingest.header import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from node.ingest.persist import GroupCommitter, persist_instance
from node.ingest.spool import remove_stale_temp_files

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_RECV_CHUNK = 64 << 20
_PREALLOCATE_LIMIT = 64 << 20  # a hostile length field must not allocate gigabytes up front
_MAX_ASSOCIATE_RQ = 1 << 20


def supported_contexts() -> dict[str, frozenset[str]]:
    """Abstract syntax → transfer syntaxes accepted: Verification and every storage SOP class
    pynetdicom knows, each with every transfer syntax it knows (the conformance statement's tables)."""
    syntaxes = frozenset(str(ts) for ts in ALL_TRANSFER_SYNTAXES)
    abstract = [VERIFICATION] + [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    return dict.fromkeys(abstract, syntaxes)


SUPPORTED_CONTEXTS = supported_contexts()


def caller_allowed(entries: list[CallerAllowEntry], calling_ae: str, host: str) -> bool:
    """True when no allowlist is configured or an entry matches the AE title (and host)."""
    if not entries:
        return True
    title = calling_ae.strip()
    return any(e.ae_title.strip() == title and e.host_matches(host) for e in entries)


def negotiate_contexts(proposed: list[ul.ProposedContext]) -> list[ul.AcceptedContext]:
    """Accept each proposed context whose abstract syntax we support, in the first transfer syntax
    *the sender* listed that we know (so it sends what it has rather than transcoding)."""
    results = []
    for context in proposed:
        known = SUPPORTED_CONTEXTS.get(context.abstract_syntax)
        fallback = context.transfer_syntaxes[0] if context.transfer_syntaxes else ""
        if known is None:
            results.append(
                ul.AcceptedContext(
                    context.context_id, ul.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, fallback
                )
            )
            continue
        chosen = next((ts for ts in context.transfer_syntaxes if ts in known), None)
        if chosen is None:
            results.append(
                ul.AcceptedContext(
                    context.context_id, ul.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, fallback
                )
            )
        else:
            results.append(ul.AcceptedContext(context.context_id, ul.PC_ACCEPTANCE, chosen))
    return results


class _Closed(Exception):
    """The peer closed the connection, released or aborted: nothing more to send."""


class _Association:
    """One connection from A-ASSOCIATE-RQ to release or abort, served by its own thread."""

    def __init__(self, server: _Server, sock: socket.socket, address: tuple[str, int]) -> None:
        self.server = server
        self.sock = sock
        self.host = str(address[0])
        self.calling_ae = ""
        self.peer_max_pdu = 0
        self.contexts: dict[int, str] = {}  # accepted context id → transfer syntax
        self.who: Association | None = None
        self.statuses: Counter[int] = Counter()  # C-STORE statuses answered, for /metrics
        self._header = bytearray(6)
        self._aborting = False
        self._waitall = not isinstance(sock, ssl.SSLSocket)
        self._timeout: float | None = None
        if self._waitall:
            sock.settimeout(None)  # blocking mode; set_timeout arms the kernel timeouts

    # -- I/O ---------------------------------------------------------------------------------
    def set_timeout(self, seconds: float) -> None:
        """Plain TCP sockets stay in blocking mode with kernel timeouts (SO_RCVTIMEO/SO_SNDTIMEO),
        so a whole PDU arrives in one ``MSG_WAITALL`` receive: one system call and one GIL
        hand-over per PDU instead of one per ~64 KiB segment, which is what limited several
        associations in one process. TLS sockets keep Python's timeout (no MSG_WAITALL there)."""
        if seconds == self._timeout:
            return
        self._timeout = seconds
        if not self._waitall:
            self.sock.settimeout(seconds)
            return
        whole, fraction = divmod(seconds, 1.0)
        value = struct.pack("ll", int(whole), int(fraction * 1_000_000))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)

    def _recv_into(self, view: memoryview) -> None:
        received, flags = 0, socket.MSG_WAITALL if self._waitall else 0
        while received < len(view):
            try:
                count = self.sock.recv_into(
                    view[received:], min(len(view) - received, _RECV_CHUNK), flags
                )
            except BlockingIOError as exc:  # SO_RCVTIMEO expired
                raise TimeoutError(f"no data for {self._timeout:g} s") from exc
            if count == 0:
                raise _Closed("connection closed by the peer")
            received += count
            if _QUICKACK is not None:
                self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def _read_pdu(self, limit: int | None = None) -> tuple[int, bytearray]:
        with memoryview(self._header) as header:
            self._recv_into(header)
        pdu_type, _, length = struct.unpack(">BBI", self._header)
        if pdu_type not in ul.PDU_TYPES:
            raise ul.PDUError(f"unknown PDU type 0x{pdu_type:02X}")
        if limit is not None and length > limit:
            raise ul.PDUError(f"PDU type 0x{pdu_type:02X} of {length} bytes exceeds {limit}")
        if length <= _PREALLOCATE_LIMIT:
            body = bytearray(length)
            with memoryview(body) as view:
                self._recv_into(view)
            return pdu_type, body
        body = bytearray()
        while len(body) < length:  # grows only as far as the peer really sends
            chunk = bytearray(min(length - len(body), _PREALLOCATE_LIMIT))
            with memoryview(chunk) as view:
                self._recv_into(view)
            body += chunk
        return pdu_type, body

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def abort(self, reason: int = 0) -> None:
        """Send A-ABORT (best effort) and shut the socket, which also wakes a blocked read."""
        if self._aborting:
            return
        self._aborting = True
        with contextlib.suppress(OSError):
            self.sock.sendall(ul.encode_abort(ul.ABORT_SOURCE_PROVIDER, reason))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    # -- the association ----------------------------------------------------------------------
    def run(self) -> None:
        settings = self.server.settings
        try:
            self.set_timeout(settings.acse_timeout_s)
            pdu_type, body = self._read_pdu(_MAX_ASSOCIATE_RQ)
            if pdu_type != ul.A_ASSOCIATE_RQ:
                raise ul.PDUError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
            if not self._negotiate(ul.parse_associate_rq(body)):
                return
            try:
                self._serve()
            finally:
                self.server.release_slot(self)
                self._record()
        except _Closed:
            pass
        except TimeoutError:
            log.warning("association from %r at %s timed out; aborted", self.calling_ae, self.host)
            self.abort()
        except (ul.PDUError, dimse.CommandError) as exc:
            log.warning("association from %r at %s aborted: %s", self.calling_ae, self.host, exc)
            self.abort(ul.ABORT_INVALID_PARAMETER)
        except OSError as exc:  # reset, broken pipe, TLS errors
            log.info("connection from %r at %s ended: %s", self.calling_ae, self.host, exc)

    def _record(self) -> None:
        """One audit row per served association with the statuses answered: /metrics counts
        associations and C-STORE statuses from the database, so several receivers add up."""
        try:
            with self.server.db.write() as session:
                receiver_stats.record_association(
                    session, self.calling_ae.strip(), self.host, self.statuses
                )
        except Exception:  # statistics must never break the association's ending
            log.exception("could not record the association from %r", self.calling_ae)

    def _reject(self, result: int, source: int, reason: int, why: str) -> bool:
        log.warning("rejected association from %r at %s: %s", self.calling_ae, self.host, why)
        self._send(ul.encode_associate_rj(result, source, reason))
        self._drain_after_reject()
        return False

    def _drain_after_reject(self) -> None:
        """Give the peer a moment to read the rejection and close first (no RST on unread data)."""
        with contextlib.suppress(OSError):
            self.set_timeout(1.0)
            self.sock.recv(1)

    def _negotiate(self, request: ul.AssociateRequest) -> bool:
        settings, server = self.server.settings, self.server
        self.calling_ae = request.calling_ae
        if not request.protocol_version & 1:
            return self._reject(ul.RJ_PERMANENT, ul.RJ_SOURCE_ACSE, ul.RJ_ACSE_PROTOCOL_VERSION,
                                f"protocol version {request.protocol_version} not supported")  # fmt: skip
        if request.application_context != ul.DICOM_APPLICATION_CONTEXT:
            return self._reject(ul.RJ_PERMANENT, ul.RJ_SOURCE_USER, ul.RJ_USER_CONTEXT_NAME,
                                f"application context {request.application_context!r}")  # fmt: skip
        if request.called_ae.strip() != settings.ae_title.strip():
            return self._reject(ul.RJ_PERMANENT, ul.RJ_SOURCE_USER, ul.RJ_USER_CALLED_AE,
                                f"called AE title {request.called_ae!r} is not ours")  # fmt: skip
        if not caller_allowed(server.allowed_callers, request.calling_ae, self.host):
            return self._reject(ul.RJ_PERMANENT, ul.RJ_SOURCE_USER, ul.RJ_USER_CALLING_AE,
                                "calling AE title not allowed")  # fmt: skip
        if not server.take_slot(self):
            return self._reject(ul.RJ_TRANSIENT, ul.RJ_SOURCE_PRESENTATION, ul.RJ_PRESENTATION_LOCAL_LIMIT,
                                f"already {settings.max_associations} associations")  # fmt: skip
        results = negotiate_contexts(request.contexts)
        self.contexts = {
            c.context_id: c.transfer_syntax for c in results if c.result == ul.PC_ACCEPTANCE
        }
        self.peer_max_pdu = request.max_length
        self.who = Association(calling_ae=request.calling_ae.strip(), called_ae=request.called_ae.strip(),
                               peer_host=self.host, source="dicom")  # fmt: skip
        try:
            self._send(ul.encode_associate_ac(
                request, results, max_length=0,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version=IMPLEMENTATION_VERSION_NAME))  # fmt: skip
        except BaseException:
            server.release_slot(self)
            raise
        log.debug("association from %r at %s: %d of %d contexts accepted", request.calling_ae,
                  self.host, len(self.contexts), len(results))  # fmt: skip
        return True

    def _serve(self) -> None:
        """P-DATA until release or abort; one DIMSE message (command, then data set) at a time."""
        settings = self.server.settings
        command_parts: list[bytes] = []
        data_parts: list[memoryview] = []
        command: dimse.Command | None = None
        command_context = 0
        while True:
            mid_message = command is not None or bool(command_parts)
            self.set_timeout(
                settings.dimse_timeout_s if mid_message else settings.network_timeout_s
            )
            pdu_type, body = self._read_pdu()
            if pdu_type == ul.A_RELEASE_RQ:
                self.set_timeout(settings.acse_timeout_s)
                self._send(ul.encode_release_rp())
                return
            if pdu_type == ul.A_ABORT:
                log.info(
                    "association from %r at %s aborted by the peer", self.calling_ae, self.host
                )
                return
            if pdu_type != ul.P_DATA_TF:
                raise ul.PDUError(
                    f"unexpected PDU type 0x{pdu_type:02X} on an established association"
                )
            for pdv in ul.iter_pdvs(body):
                if pdv.context_id not in self.contexts:
                    raise ul.PDUError(
                        f"PDV on presentation context {pdv.context_id}, which was not accepted"
                    )
                if pdv.is_command:
                    if command is not None:
                        raise ul.PDUError("command fragment while a data set was expected")
                    command_parts.append(bytes(pdv.data))
                    if pdv.is_last:
                        command = dimse.parse_command(b"".join(command_parts))
                        command_context, command_parts = pdv.context_id, []
                        if not command.has_data_set:
                            self._answer(command, command_context, None)
                            command = None
                    continue
                if command is None:
                    raise ul.PDUError("data set fragment without a preceding command")
                if pdv.context_id != command_context:
                    raise ul.PDUError("data set on another presentation context than its command")
                data_parts.append(pdv.data)
                if pdv.is_last:
                    data = (
                        data_parts[0] if len(data_parts) == 1 else memoryview(b"".join(data_parts))
                    )
                    self._answer(command, command_context, data)
                    command, data_parts = None, []

    def _answer(self, command: dimse.Command, context_id: int, data: memoryview | None) -> None:
        if command.command_field == dimse.C_ECHO_RQ:
            status = 0x0000
        elif command.command_field == dimse.C_STORE_RQ:
            status = self._store(command, context_id, data)
            self.statuses[status] += 1
        elif command.command_field == dimse.C_CANCEL_RQ:
            return  # nothing is cancellable: C-STORE is answered as soon as it is complete
        else:
            log.warning("association from %r at %s: DIMSE command 0x%04X not supported",
                        self.calling_ae, self.host, command.command_field)  # fmt: skip
            status = dimse.UNRECOGNISED_OPERATION
        response = dimse.encode_response(command, status)
        self._send(ul.encode_p_data(context_id, response, command=True, max_pdu=self.peer_max_pdu))

    def _store(self, command: dimse.Command, context_id: int, data: memoryview | None) -> int:
        assert self.who is not None
        if data is None:
            log.warning("refused C-STORE from %r at %s: no data set", self.calling_ae, self.host)
            return int(StoreStatus.CANNOT_UNDERSTAND)
        try:
            outcome = persist_instance(self.server.db, self.server.settings, data, self.who,
                                       transfer_syntax_uid=self.contexts[context_id])  # fmt: skip
        except Exception:  # persist_instance is written not to raise; never lose the association
            log.exception(
                "C-STORE of %s from %r failed", command.affected_sop_instance, self.calling_ae
            )
            return int(StoreStatus.PROCESSING_FAILURE)
        return int(outcome.status)


class _Server(socketserver.ThreadingTCPServer):
    """Accept loop with one thread per connection, SO_REUSEPORT and off-thread TLS handshakes."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, settings: Settings, db: Database, ssl_context: ssl.SSLContext | None,
                 reuse_port: bool) -> None:  # fmt: skip
        self.settings, self.db, self.ssl_context, self.reuse_port = (
            settings,
            db,
            ssl_context,
            reuse_port,
        )
        self.allowed_callers: list[CallerAllowEntry] = list(settings.allowed_callers)
        self.active_associations: list[_Association] = []
        self._slots = threading.Lock()
        super().__init__(
            (settings.dicom_host, settings.dicom_port), socketserver.BaseRequestHandler
        )

    def server_bind(self) -> None:
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[Any, Any]:
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's thread: socket options, TLS handshake, then the association."""
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request.settimeout(self.settings.acse_timeout_s)
            if isinstance(request, ssl.SSLSocket):
                request.do_handshake()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.warning("connection from %s dropped before association: %s", client_address, exc)
            return
        _Association(self, request, client_address).run()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("unexpected error serving %s", client_address)

    def take_slot(self, assoc: _Association) -> bool:
        with self._slots:
            if len(self.active_associations) >= self.settings.max_associations:
                return False
            self.active_associations.append(assoc)
            return True

    def release_slot(self, assoc: _Association) -> None:
        with self._slots:
            if assoc in self.active_associations:
                self.active_associations.remove(assoc)


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
    _stopped: bool = field(default=False, init=False)

    @property
    def active_associations(self) -> int:
        return len(self.server.active_associations)

    def stop(self, timeout: float = 30) -> None:
        if self._stopped:
            return
        self._stopped = True
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
        self.committer.stop(timeout)


def start_receiver(settings: Settings, db: Database, *, reuse_port: bool = False) -> ReceiverHandle:
    """Start listening (non-blocking) on ``settings.dicom_host``/``dicom_port`` (0: any free)."""
    configure_mappers()  # once, here: not ~0.3 s inside the first instance's commit
    committer = GroupCommitter(db, settings).start()
    try:
        server = _Server(settings, db, tls_context(settings), reuse_port)
    except OSError:  # port taken, bad TLS files: leave nothing running behind
        committer.stop()
        raise
    threading.Thread(
        target=_clean_spool, args=(settings,), name="pacsnode-spool-clean", daemon=True
    ).start()
    thread = threading.Thread(
        target=server.serve_forever, name="pacsnode-dicom-accept", daemon=True
    )
    thread.start()
    port = int(server.server_address[1])
    log.info("DICOM receiver %s listening on %s:%d%s", settings.ae_title, settings.dicom_host, port,
             " (TLS)" if settings.tls else "")  # fmt: skip
    return ReceiverHandle(port=port, server=server, committer=committer)


def _clean_spool(settings: Settings) -> None:
    removed = remove_stale_temp_files(settings.spool_dir)
    if removed:
        log.info("removed %d unacknowledged temp file(s) left by a stopped receiver", removed)


def run_receiver_forever(
    settings: Settings, db: Database, stop: threading.Event, *, reuse_port: bool = False
) -> None:
    """Serve until ``stop`` is set (the runtime sets it on SIGTERM), then stop gracefully."""
    handle = start_receiver(settings, db, reuse_port=reuse_port)
    try:
        stop.wait()
    finally:
        handle.stop()
