"""The DICOM listener: C-ECHO and C-STORE for every storage SOP class, in every transfer syntax.

Instances are accepted as sent (no transcoding). Association checks: the called AE title must be
ours (A-ASSOCIATE-RJ reason 7, "called AE title not recognised"); with ``allowed_callers`` the
calling AE title, optionally bound to a host, must be listed (reason 3, "calling AE title not
recognised"); at most ``max_associations`` at once (transient rejection, local limit exceeded).

Speed (see PERFORMANCE-NOTES): unlimited maximum PDU, pynetdicom's per-PDU debug logging off,
TCP_NODELAY on every accepted socket and TCP_QUICKACK re-armed after every receive (so senders
that keep Nagle on do not wait ~40 ms on delayed ACKs), reads straight into one buffer per PDU,
and TLS handshakes done in the connection's own thread so a silent client cannot stall accepts.
"""

from __future__ import annotations

import copy
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.acse import ACSE
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from node.config import CallerAllowEntry, Settings
from node.db.engine import Database
from node.ingest.handlers import event_handlers
from node.ingest.persist import GroupCommitter
from node.ingest.spool import remove_stale_temp_files

log = logging.getLogger(__name__)
_config.LOG_HANDLER_LEVEL = "none"  # pynetdicom's standard handlers log every PDU: far too slow

VERIFICATION = "1.2.840.10008.1.1"
REJECT_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE = 0x01, 0x01, 0x03
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_RECV_CHUNK = 1 << 20
_PREALLOCATE_LIMIT = 64 << 20


class _FastSocket(AssociationSocket):
    """Reads a whole PDU into one buffer (pynetdicom reads 4 KiB at a time) and re-arms
    TCP_QUICKACK after each receive."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        assert sock is not None
        if nr_bytes > _PREALLOCATE_LIMIT:  # a hostile length field must not allocate gigabytes
            return self._recv_growing(sock, nr_bytes)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        try:
            while received < nr_bytes:
                count = sock.recv_into(view[received:], min(nr_bytes - received, _RECV_CHUNK))
                if count == 0:
                    break
                received += count
                if _QUICKACK is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        finally:
            view.release()
        if received < nr_bytes:
            del buffer[received:]
        return buffer

    @staticmethod
    def _recv_growing(sock: socket.socket, nr_bytes: int) -> bytearray:
        buffer = bytearray()
        while len(buffer) < nr_bytes:
            chunk = sock.recv(min(nr_bytes - len(buffer), _RECV_CHUNK))
            if not chunk:
                break
            buffer += chunk
            if _QUICKACK is not None:
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return buffer


def caller_allowed(entries: list[CallerAllowEntry], calling_ae: str, host: str) -> bool:
    """True when no allowlist is configured or an entry matches the AE title (and host)."""
    if not entries:
        return True
    title = calling_ae.strip()
    return any(e.ae_title.strip() == title and (e.host is None or e.host == host) for e in entries)


class _AllowlistACSE(ACSE):
    """Adds the (AE title, host) allowlist to pynetdicom's acceptor checks."""

    def _negotiate_as_acceptor(self) -> None:
        request = cast(A_ASSOCIATE, self.requestor.primitive)
        server = cast(_Server, self.assoc._server)
        called_ok = request.called_ae_title.strip() == self.acceptor.ae_title.strip()
        host = self.assoc.requestor.address
        if called_ok and not caller_allowed(server.allowed_callers, request.calling_ae_title, host):
            log.warning("rejected association from %r at %s: calling AE title not allowed",
                        request.calling_ae_title, host)  # fmt: skip
            self.requestor.ae_title = request.calling_ae_title
            self.send_reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        self._prefer_requestor_order(request.presentation_context_definition_list)
        super()._negotiate_as_acceptor()

    def _prefer_requestor_order(self, proposed: list[Any]) -> None:
        """pynetdicom picks the acceptor's first matching transfer syntax; take the sender's
        preference instead, so it sends what it has rather than transcoding (accept as sent)."""
        order: dict[str, list[UID]] = {}
        for context in proposed:
            syntaxes = order.setdefault(str(context.abstract_syntax), [])
            syntaxes.extend(ts for ts in context.transfer_syntax if ts not in syntaxes)
        for context in self.acceptor.supported_contexts:
            preferred = order.get(str(context.abstract_syntax))
            if preferred:
                supported = context.transfer_syntax
                ordered = [ts for ts in preferred if ts in supported]
                if ordered != supported[: len(ordered)]:
                    # syntaxes are validated UIDs already; the public setter re-validates each
                    # one (~0.2 s per association over storescu's ~120 proposed contexts)
                    context._transfer_syntax = ordered + [ts for ts in supported if ts not in ordered]


class _CheapCopyContexts(list[Any]):
    """pynetdicom deep-copies the server's ~170 x 45 supported contexts for every association
    (~0.3 s of CPU each on this machine). Shallow copies of each context are enough: the only
    per-association change (``_prefer_requestor_order``) replaces a context's syntax list."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [copy.copy(context) for context in self]


class _RequestHandler(RequestHandler):
    def _create_association(self) -> Any:
        assoc = super()._create_association()
        # pynetdicom 3.0.4 (pinned) builds these itself; swapping the class keeps its state
        assoc.dul.socket.__class__ = _FastSocket
        assoc.acse.__class__ = _AllowlistACSE
        return assoc


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server plus SO_REUSEPORT, socket options and off-thread TLS."""

    daemon_threads = True
    reuse_port = False
    socket_timeout: float | None = None
    allowed_callers: list[CallerAllowEntry] = []  # set per receiver by _make_server

    def server_bind(self) -> None:
        assert self.socket is not None
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's thread: socket options, TLS handshake, then pynetdicom."""
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request.settimeout(self.socket_timeout)
            if isinstance(request, ssl.SSLSocket):
                request.do_handshake()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.warning("connection from %s dropped before association: %s", client_address, exc)
            request.close()
            return
        super().finish_request(request, client_address)


def build_ae(settings: Settings) -> AE:
    """An AE that accepts every storage SOP class in every transfer syntax pynetdicom knows."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = 0
    ae.require_called_aet = True
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.add_supported_context(VERIFICATION, ALL_TRANSFER_SYNTAXES)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(cast(str, context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    return ae


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
        self.server.shutdown()  # stops the accept loop and closes the listening socket
        deadline = time.monotonic() + timeout
        while self.server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self.server.active_associations:
            log.warning("aborting association from %s still open after %.0f s",
                        assoc.requestor.ae_title, timeout)  # fmt: skip
            assoc.abort()
        self.committer.stop(timeout)


def start_receiver(settings: Settings, db: Database, *, reuse_port: bool = False) -> ReceiverHandle:
    """Start listening (non-blocking) on ``settings.dicom_host``/``dicom_port`` (0: any free)."""
    committer = GroupCommitter(db, settings).start()
    ae = build_ae(settings)
    try:
        server = _make_server(ae, settings, db, reuse_port)
    except OSError:  # port taken, bad TLS files: leave nothing running behind
        committer.stop()
        raise
    threading.Thread(target=_clean_spool, args=(settings,), name="pacsnode-spool-clean", daemon=True).start()
    ae._servers.append(server)
    thread = threading.Thread(target=server.serve_forever, name="pacsnode-dicom-accept", daemon=True)
    thread.start()
    port = int(server.server_address[1])
    log.info("DICOM receiver %s listening on %s:%d%s", settings.ae_title, settings.dicom_host, port,
             " (TLS)" if settings.tls else "")  # fmt: skip
    return ReceiverHandle(port=port, server=server, committer=committer)


def _clean_spool(settings: Settings) -> None:
    removed = remove_stale_temp_files(settings.spool_dir)
    if removed:
        log.info("removed %d unacknowledged temp file(s) left by a stopped receiver", removed)


def _make_server(ae: AE, settings: Settings, db: Database, reuse_port: bool) -> _Server:
    # Class attributes are read during __init__ (server_bind), so configure a subclass.
    server_class = type(
        "_ConfiguredServer",
        (_Server,),
        {
            "reuse_port": reuse_port,
            "socket_timeout": settings.network_timeout_s,
            "allowed_callers": list(settings.allowed_callers),
        },
    )
    return server_class(
        ae,
        (settings.dicom_host, settings.dicom_port),
        ae.ae_title,
        _CheapCopyContexts(ae.supported_contexts),
        tls_context(settings),
        event_handlers(db, settings),
        _RequestHandler,
    )


def run_receiver_forever(
    settings: Settings, db: Database, stop: threading.Event, *, reuse_port: bool = False
) -> None:
    """Serve until ``stop`` is set (the runtime sets it on SIGTERM), then stop gracefully."""
    handle = start_receiver(settings, db, reuse_port=reuse_port)
    try:
        stop.wait()
    finally:
        handle.stop()
