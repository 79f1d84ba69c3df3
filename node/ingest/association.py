"""One DICOM connection, from accept to release or abort, served by its own thread.

The association's whole state lives in one :class:`Connection` (``node.ingest.upper_layer`` and
``node.ingest.dimse`` hold the codecs and say why this is not pynetdicom's acceptor).

Bounded per peer:

- *Memory.* A PDU up to ``WHOLE_PDU`` bytes is read whole into the connection's one buffer; a
  larger one is read PDV by PDV in chunks of that size. A data set goes to its spool file
  fragment by fragment as it arrives (``spool.IncomingFile``), so neither a 2 GB instance nor a
  stream of never-final fragments grows the process; a command set is capped at
  ``MAX_COMMAND``; a data set over ``max_instance_mb`` is dropped as it arrives and refused with
  0xA700 once complete.
- *Time.* Deadlines cover whole phases, not single reads, so bytes trickling in never extend
  them: connect → complete A-ASSOCIATE-RQ within ``acse_timeout_s`` (TLS handshake included);
  idle between messages at most ``network_timeout_s``; one DIMSE message (command and data set)
  within ``dimse_timeout_s`` plus one second per MiB received. The listener's watchdog
  (``scp``) enforces them by shutting the socket, which wakes a blocked read.

The acknowledgement means what it says (PS3.4 B.2.3, PS3.7 9.3.1): the command's Affected SOP
Class/Instance UIDs are checked (``core.dicom_uids.checked_uid``; missing or malformed → 0xC000),
the data set's must equal them (else 0xA900, as storescp answers), and 0x0000 is sent only after
the file and its row are durable. A response names only UIDs of the instance that was stored.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from typing import Protocol

from core.config import CallerAllowEntry, Settings
from core.dicom_uids import IMPLEMENTATION_CLASS_UID, InvalidUIDError, checked_uid
from core.domain import Association, StoreStatus
from node.db.engine import Database
from node.db.repositories import receiver_stats
from node.ingest import dimse
from node.ingest import upper_layer as ul
from node.ingest.contexts import negotiate_contexts
from node.ingest.header import IMPLEMENTATION_VERSION_NAME, build_file_meta
from node.ingest.persist import persist_received, spool_for
from node.ingest.spool import IncomingFile, InsufficientSpace, check_free_space

log = logging.getLogger(__name__)

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
WHOLE_PDU = 4 << 20  # PDUs up to this size are read in one receive; larger ones streamed
MAX_COMMAND = 64 << 10  # a command set is a few hundred bytes
_MAX_ASSOCIATE_RQ = 1 << 20
_MAX_SHORT_PDU = 64  # A-RELEASE-RQ/RP and A-ABORT bodies are 4 bytes
_DIMSE_CREDIT_S_PER_BYTE = 1.0 / (1 << 20)  # one second more per MiB received
_SPACE_CHECK_EVERY = 64 << 20  # free space is checked again after every 64 MiB of a data set
_ATTR_SOP_CLASS = "Affected SOP Class UID (0000,0002)"
_ATTR_SOP_INSTANCE = "Affected SOP Instance UID (0000,1000)"


class Listener(Protocol):
    """What a connection needs from the server that accepted it."""

    settings: Settings
    db: Database
    allowed_callers: list[CallerAllowEntry]

    def take_slot(self, conn: Connection) -> bool: ...
    def release_slot(self, conn: Connection) -> None: ...
    def leave_pending(self, conn: Connection) -> None: ...


def caller_allowed(entries: list[CallerAllowEntry], calling_ae: str, host: str) -> bool:
    """True when no allowlist is configured or an entry matches the AE title (and host)."""
    if not entries:
        return True
    title = calling_ae.strip()
    return any(e.ae_title.strip() == title and e.host_matches(host) for e in entries)


class _Closed(Exception):
    """The peer closed the connection, released or aborted: nothing more to send."""


class _Message:
    """One DIMSE message being received: command fragments, then the data set's destination."""

    def __init__(self) -> None:
        self.started: float | None = None  # first byte of the message (its deadline's start)
        self.command_parts = bytearray()
        self.command: dimse.Command | None = None
        self.context_id = 0
        self.sink: IncomingFile | None = None  # None while a data set is dropped or not expected
        self.refusal: StoreStatus | None = None  # decided before the data set ended
        self.received = 0  # data set bytes so far
        self.sop_class = ""  # the command's UIDs, once checked
        self.sop_instance = ""

    def drop_sink(self) -> None:
        if self.sink is not None:
            self.sink.discard()
            self.sink = None


class Connection:
    """One connection from A-ASSOCIATE-RQ to release or abort."""

    def __init__(self, server: Listener, sock: socket.socket, address: tuple[str, int]) -> None:
        self.server = server
        self.settings = server.settings
        self.sock = sock
        self.host = str(address[0])
        self.calling_ae = ""
        self.peer_max_pdu = 0
        self.contexts: dict[int, str] = {}  # accepted context id → transfer syntax
        self.who: Association | None = None
        self.statuses: Counter[int] = Counter()  # C-STORE statuses answered, for /metrics
        self.established = False
        self.pending = True  # counted by the server until it associates or ends
        self.deadline: float | None = time.monotonic() + self.settings.acse_timeout_s
        self.timed_out = False
        self._lock = threading.Lock()
        self._header = bytearray(6)
        self._buffer = bytearray(1 << 16)
        self._message = _Message()
        self._aborting = False
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._max_bytes = int(self.settings.max_instance_mb * (1 << 20))
        backstop = max(self.settings.acse_timeout_s, self.settings.network_timeout_s,
                       self.settings.dimse_timeout_s)  # fmt: skip
        if self._tls:
            sock.settimeout(backstop)
        else:  # blocking mode with kernel timeouts: a whole PDU in one MSG_WAITALL receive
            sock.settimeout(None)
            whole, fraction = divmod(backstop, 1.0)
            value = struct.pack("ll", int(whole), int(fraction * 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)

    # -- deadlines (enforced by the listener's watchdog) --------------------------------------
    def expire_if_late(self, now: float) -> bool:
        """Called by the watchdog: past the deadline, abort (when associated) and shut the socket,
        which ends the blocked read in the connection's thread. True when it did."""
        with self._lock:
            if self.timed_out or self.deadline is None or now < self.deadline:
                return False
            self.timed_out = True
        if self.established and not self._tls:  # the thread is reading, not sending
            with contextlib.suppress(OSError):
                self.sock.send(ul.encode_abort(ul.ABORT_SOURCE_PROVIDER, ul.ABORT_NOT_SPECIFIED),
                               socket.MSG_DONTWAIT)  # fmt: skip
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # the raw socket, even under TLS
        return True

    def _stop_clock(self) -> None:
        """Before sending: the watchdog must not write an A-ABORT into a response."""
        with self._lock:
            if self.timed_out:
                raise _Closed("deadline passed")
            self.deadline = None

    # -- I/O ---------------------------------------------------------------------------------
    def _recv_into(self, view: memoryview) -> None:
        received, flags = 0, 0 if self._tls else socket.MSG_WAITALL
        while received < len(view):
            try:
                count = self.sock.recv_into(view[received:], len(view) - received, flags)
            except BlockingIOError as exc:  # SO_RCVTIMEO expired
                raise TimeoutError("no data within the socket timeout") from exc
            if count == 0:
                raise _Closed("connection closed by the peer")
            received += count
            if _QUICKACK is not None:
                self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def _read_header(self) -> tuple[int, int]:
        with memoryview(self._header) as header:
            self._recv_into(header)
        pdu_type, _, length = struct.unpack(">BBI", self._header)
        if pdu_type not in ul.PDU_TYPES:
            raise ul.PDUError(f"unknown PDU type 0x{pdu_type:02X}", ul.ABORT_UNRECOGNIZED_PDU)
        return pdu_type, length

    def _read_body(self, length: int, limit: int) -> memoryview:
        """The next ``length`` bytes, in the connection's reusable buffer (valid until the next
        read)."""
        if length > limit:
            raise ul.PDUError(f"PDU body of {length} bytes exceeds {limit}")
        if len(self._buffer) < length:  # grows to what the peer really sends, at most WHOLE_PDU
            self._buffer = bytearray(min(max(length, 2 * len(self._buffer)), WHOLE_PDU))
        view = memoryview(self._buffer)[:length]
        self._recv_into(view)
        return view

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def abort(self, reason: int = ul.ABORT_NOT_SPECIFIED) -> None:
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
        try:
            self._run()
        except _Closed:
            if self.timed_out:
                self._log_timeout()
        except TimeoutError:
            self._log_timeout()
            self.abort()
        except ul.PDUError as exc:
            log.warning("association from %r at %s aborted (reason %d): %s", self.calling_ae,
                        self.host, exc.reason, exc)  # fmt: skip
            self.abort(exc.reason)
        except dimse.CommandError as exc:
            log.warning("association from %r at %s aborted: %s", self.calling_ae, self.host, exc)
            self.abort(ul.ABORT_INVALID_PARAMETER)
        except (OSError, ValueError) as exc:  # reset, broken pipe, TLS errors
            if self.timed_out:
                self._log_timeout()
            else:
                log.info("connection from %r at %s ended: %s", self.calling_ae, self.host, exc)
        finally:
            self._message.drop_sink()

    def _log_timeout(self) -> None:
        phase = "an established association" if self.established else "association negotiation"
        log.warning("%s from %r at %s passed its deadline; closed", phase, self.calling_ae,
                    self.host)  # fmt: skip

    def _run(self) -> None:
        if isinstance(self.sock, ssl.SSLSocket):
            self.sock.do_handshake()
        pdu_type, length = self._read_header()
        if pdu_type != ul.A_ASSOCIATE_RQ:
            raise ul.PDUError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}",
                              ul.ABORT_UNEXPECTED_PDU)  # fmt: skip
        request = ul.parse_associate_rq(bytes(self._read_body(length, _MAX_ASSOCIATE_RQ)))
        if not self._negotiate(request):
            return
        try:
            self._serve()
        finally:
            self.server.release_slot(self)
            self._record()

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
        self.server.leave_pending(self)
        self._send(ul.encode_associate_rj(result, source, reason))
        self._drain_after_reject()
        return False

    def _drain_after_reject(self) -> None:
        """Give the peer a moment to read the rejection and close first (no RST on unread data)."""
        self.deadline = time.monotonic() + 1.0
        with contextlib.suppress(OSError, _Closed, TimeoutError):
            self._recv_into(memoryview(bytearray(1)))

    def _negotiate(self, request: ul.AssociateRequest) -> bool:
        settings, server = self.settings, self.server
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
        server.leave_pending(self)
        results = negotiate_contexts(request.contexts)
        self.contexts = {
            c.context_id: c.transfer_syntax for c in results if c.result == ul.PC_ACCEPTANCE
        }
        self.peer_max_pdu = request.max_length
        self.who = Association(calling_ae=request.calling_ae.strip(), called_ae=request.called_ae.strip(),
                               peer_host=self.host, source="dicom")  # fmt: skip
        try:
            self._stop_clock()
            self._send(ul.encode_associate_ac(
                request, results, max_length=0,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version=IMPLEMENTATION_VERSION_NAME))  # fmt: skip
        except BaseException:
            server.release_slot(self)
            raise
        self.established = True
        log.debug("association from %r at %s: %d of %d contexts accepted", request.calling_ae,
                  self.host, len(self.contexts), len(results))  # fmt: skip
        return True

    def _serve(self) -> None:
        """PDUs until release or abort; one DIMSE message (command, then data set) at a time."""
        settings = self.settings
        while True:
            message = self._message
            if message.started is None:  # between messages: the idle limit
                self.deadline = time.monotonic() + settings.network_timeout_s
            pdu_type, length = self._read_header()
            if message.started is None:
                message.started = time.monotonic()
                self.deadline = message.started + settings.dimse_timeout_s
            if pdu_type == ul.P_DATA_TF:
                self._p_data(length)
            elif pdu_type == ul.A_RELEASE_RQ:
                self._read_body(length, _MAX_SHORT_PDU)
                self._stop_clock()
                self._send(ul.encode_release_rp())
                return
            elif pdu_type == ul.A_ABORT:
                self._read_body(length, _MAX_SHORT_PDU)
                log.info("association from %r at %s aborted by the peer", self.calling_ae,
                         self.host)  # fmt: skip
                return
            else:
                raise ul.PDUError(f"unexpected PDU type 0x{pdu_type:02X} on an established "
                                  "association", ul.ABORT_UNEXPECTED_PDU)  # fmt: skip

    def _p_data(self, length: int) -> None:
        if length <= WHOLE_PDU:
            for pdv in ul.iter_pdvs(self._read_body(length, WHOLE_PDU)):
                self._fragment(pdv.context_id, pdv.is_command, pdv.is_last, pdv.data)
            return
        # larger than the buffer: PDV by PDV, each value in buffer-sized chunks
        remaining, header = length, bytearray(ul.PDV_HEADER.size)
        while remaining:
            if remaining < len(header):
                raise ul.PDUError("P-DATA-TF: PDV header runs past the end of the PDU")
            with memoryview(header) as view:
                self._recv_into(view)
            item_length, context_id, control = ul.PDV_HEADER.unpack(header)
            value_length = item_length - 2
            remaining -= len(header)
            if item_length < 2 or value_length > remaining:
                raise ul.PDUError(f"P-DATA-TF: PDV length {item_length} does not fit the PDU")
            remaining -= value_length
            is_command, is_last = bool(control & 1), bool(control & 2)
            if value_length == 0:
                self._fragment(context_id, is_command, is_last, memoryview(b""))
            while value_length:
                chunk = min(value_length, WHOLE_PDU)
                value_length -= chunk
                data = self._read_body(chunk, WHOLE_PDU)
                self._fragment(context_id, is_command, is_last and not value_length, data)

    def _fragment(self, context_id: int, is_command: bool, is_last: bool, data: memoryview) -> None:
        message = self._message
        if message.started is None:  # a message that began inside the previous one's last PDU
            message.started = time.monotonic()
            self.deadline = message.started + self.settings.dimse_timeout_s
        if context_id not in self.contexts:
            raise ul.PDUError(f"PDV on presentation context {context_id}, which was not accepted")
        if is_command:
            if message.command is not None:
                raise ul.PDUError("command fragment while a data set was expected",
                                  ul.ABORT_UNEXPECTED_PARAMETER)  # fmt: skip
            if len(message.command_parts) + len(data) > MAX_COMMAND:
                raise ul.PDUError(f"command set longer than {MAX_COMMAND} bytes")
            message.command_parts += data
            if is_last:
                self._command_complete(context_id)
            return
        if message.command is None:
            raise ul.PDUError("data set fragment without a preceding command",
                              ul.ABORT_UNEXPECTED_PARAMETER)  # fmt: skip
        if context_id != message.context_id:
            raise ul.PDUError("data set on another presentation context than its command")
        self._data(message, data)
        if is_last:
            self._answer(message)

    def _command_complete(self, context_id: int) -> None:
        message = self._message
        command = dimse.parse_command(message.command_parts)
        message.command, message.context_id = command, context_id
        message.command_parts = bytearray()
        if not command.has_data_set:
            self._answer(message)
        elif command.command_field == dimse.C_STORE_RQ:
            self._open_sink(message, command)

    def _open_sink(self, message: _Message, command: dimse.Command) -> None:
        """Check the command's UIDs and start the spool file the data set streams into."""
        try:
            message.sop_class = _command_uid(command.affected_sop_class, _ATTR_SOP_CLASS)
            message.sop_instance = _command_uid(command.affected_sop_instance, _ATTR_SOP_INSTANCE)
            check_free_space(self.settings, 0)
            meta = build_file_meta(message.sop_class, message.sop_instance,
                                   self.contexts[message.context_id], self.calling_ae)  # fmt: skip
            message.sink = spool_for(self.settings).open_incoming(meta)
        except InvalidUIDError as exc:
            self._refuse(message, StoreStatus.CANNOT_UNDERSTAND, str(exc))
        except InsufficientSpace as exc:
            self._refuse(message, StoreStatus.OUT_OF_RESOURCES, str(exc))
        except OSError as exc:
            self._write_failed(message, exc)

    def _refuse(self, message: _Message, status: StoreStatus, why: str) -> None:
        """Drop the rest of the data set; answer ``status`` when it is complete."""
        message.drop_sink()
        if message.refusal is None:
            log.warning("refusing C-STORE from %r at %s with 0x%04X: %s", self.calling_ae,
                        self.host, status, why)  # fmt: skip
            message.refusal = status

    def _write_failed(self, message: _Message, exc: OSError) -> None:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        status = StoreStatus.OUT_OF_RESOURCES if full else StoreStatus.PROCESSING_FAILURE
        self._refuse(message, status, f"cannot write to the spool: {exc}")

    def _data(self, message: _Message, data: memoryview) -> None:
        message.received += len(data)
        assert message.started is not None
        credit = min(message.received, self._max_bytes) * _DIMSE_CREDIT_S_PER_BYTE
        self.deadline = message.started + self.settings.dimse_timeout_s + credit
        if message.sink is None:
            return
        if message.received > self._max_bytes:
            self._refuse(message, StoreStatus.OUT_OF_RESOURCES,
                         f"data set larger than max_instance_mb={self.settings.max_instance_mb:g}")  # fmt: skip
            return
        try:
            if (
                message.received // _SPACE_CHECK_EVERY
                != (message.received - len(data)) // _SPACE_CHECK_EVERY
            ):
                check_free_space(self.settings, 0)  # a long data set must not fill the disk
            message.sink.write(data)
        except InsufficientSpace as exc:
            self._refuse(message, StoreStatus.OUT_OF_RESOURCES, str(exc))
        except OSError as exc:
            self._write_failed(message, exc)

    def _answer(self, message: _Message) -> None:
        command = message.command
        assert command is not None
        self._stop_clock()  # first: on a deadline race the finally clause still drops the sink
        self._message = _Message()
        sop_class = sop_instance = ""
        if command.command_field == dimse.C_ECHO_RQ:
            status = 0x0000
            with contextlib.suppress(InvalidUIDError):
                sop_class = _command_uid(command.affected_sop_class, _ATTR_SOP_CLASS)
        elif command.command_field == dimse.C_STORE_RQ:
            status = self._store(message)
            self.statuses[status] += 1
            if status == StoreStatus.SUCCESS:
                sop_class, sop_instance = message.sop_class, message.sop_instance
        elif command.command_field == dimse.C_CANCEL_RQ:
            return  # nothing is cancellable: C-STORE is answered as soon as it is complete
        else:
            log.warning("association from %r at %s: DIMSE command 0x%04X not supported",
                        self.calling_ae, self.host, command.command_field)  # fmt: skip
            status = dimse.UNRECOGNISED_OPERATION
        response = dimse.encode_response(command, status, sop_class=sop_class,
                                         sop_instance=sop_instance)  # fmt: skip
        self._send(ul.encode_p_data(message.context_id, response, command=True,
                                    max_pdu=self.peer_max_pdu))  # fmt: skip

    def _store(self, message: _Message) -> int:
        assert message.command is not None and self.who is not None
        if not message.command.has_data_set:
            self._refuse(message, StoreStatus.CANNOT_UNDERSTAND, "C-STORE-RQ without a data set")
        if message.refusal is not None:
            return int(message.refusal)
        sink, message.sink = message.sink, None
        assert sink is not None
        try:
            outcome = persist_received(self.server.db, self.settings, sink, self.who,
                                       transfer_syntax_uid=self.contexts[message.context_id],
                                       sop_class_uid=message.sop_class,
                                       sop_instance_uid=message.sop_instance)  # fmt: skip
        except Exception:  # persist_received is written not to raise; never lose the association
            sink.discard()
            log.exception("C-STORE of %s from %r failed", message.sop_instance, self.calling_ae)
            return int(StoreStatus.PROCESSING_FAILURE)
        return int(outcome.status)


def _command_uid(raw: bytes | None, attribute: str) -> str:
    if raw is None:
        raise InvalidUIDError(attribute, None, "missing from the command set")
    return checked_uid(raw, attribute)
