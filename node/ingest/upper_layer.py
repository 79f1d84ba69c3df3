"""DICOM Upper Layer PDUs (PS3.8 §9.3) for the acceptor side: decode A-ASSOCIATE-RQ and P-DATA-TF,
encode A-ASSOCIATE-AC/RJ, P-DATA-TF, A-RELEASE-RP and A-ABORT.

Why our own: pynetdicom's acceptor routes every PDU through a DUL thread, an event queue, a state
machine and a DIMSE thread with polling loops; with senders that wait for each C-STORE response
(``TCP_NODELAY``) that costs ~5 ms per instance and caps one process near 200 instances/s, whatever
the instance size (docs/performance.md §1). Decoding these few PDUs directly, in the connection's
thread, removes that. The codec is pure (bytes in, bytes out); ``node.ingest.scp`` does the I/O.
pynetdicom stays the node's SCU (dispatch) and the test suite's client.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
PDU_TYPES = frozenset({A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RQ,
                       A_RELEASE_RP, A_ABORT})  # fmt: skip
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# A-ASSOCIATE-RJ (PS3.8 Table 9-21): result, source, reason
RJ_PERMANENT, RJ_TRANSIENT = 0x01, 0x02
RJ_SOURCE_USER, RJ_SOURCE_ACSE, RJ_SOURCE_PRESENTATION = 0x01, 0x02, 0x03
RJ_USER_CONTEXT_NAME, RJ_USER_CALLING_AE, RJ_USER_CALLED_AE = 0x02, 0x03, 0x07
RJ_ACSE_PROTOCOL_VERSION = 0x02
RJ_PRESENTATION_LOCAL_LIMIT = 0x02

# Presentation context results (PS3.8 Table 9-18)
PC_ACCEPTANCE, PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, PC_TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4

# A-ABORT (PS3.8 Table 9-26): source 2 = service provider; the reasons it gives
ABORT_SOURCE_PROVIDER = 0x02
ABORT_NOT_SPECIFIED, ABORT_UNRECOGNIZED_PDU, ABORT_UNEXPECTED_PDU = 0x00, 0x01, 0x02
ABORT_UNRECOGNIZED_PARAMETER, ABORT_UNEXPECTED_PARAMETER, ABORT_INVALID_PARAMETER = 0x04, 0x05, 0x06


class PDUError(ValueError):
    """The peer sent something that is not a well-formed PDU; the association is aborted with
    ``reason`` (PS3.8 Table 9-26), invalid-PDU-parameter-value unless said otherwise."""

    def __init__(self, message: str, reason: int = ABORT_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class AcceptedContext:
    context_id: int
    result: int
    transfer_syntax: str


@dataclass
class AssociateRequest:
    """The parts of an A-ASSOCIATE-RQ the acceptor decides on (PS3.8 §9.3.2)."""

    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str = ""
    contexts: list[ProposedContext] = field(default_factory=list)
    max_length: int = 0
    implementation_class_uid: str = ""
    implementation_version: str = ""


def _text(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("ascii", errors="replace").rstrip("\0 ").lstrip(" ")


def _sub_items(body: memoryview, start: int, what: str) -> Iterator[tuple[int, memoryview]]:
    """(item type, item value) for the variable items from ``start`` to the end of ``body``."""
    offset = start
    while offset < len(body):
        if offset + 4 > len(body):
            raise PDUError(f"{what}: item header runs past the end")
        item_type, length = body[offset], struct.unpack_from(">H", body, offset + 2)[0]
        end = offset + 4 + length
        if end > len(body):
            raise PDUError(f"{what}: item 0x{item_type:02X} of {length} bytes runs past the end")
        yield item_type, body[offset + 4 : end]
        offset = end


def parse_associate_rq(body: bytes | bytearray | memoryview) -> AssociateRequest:
    """Decode an A-ASSOCIATE-RQ body (the bytes after the 6-byte PDU header)."""
    view = memoryview(body)
    if len(view) < 68:
        raise PDUError(f"A-ASSOCIATE-RQ of {len(view)} bytes is shorter than its fixed fields (68)")
    request = AssociateRequest(
        protocol_version=struct.unpack_from(">H", view, 0)[0],
        called_ae=_text(view[4:20]),
        calling_ae=_text(view[20:36]),
    )
    for item_type, value in _sub_items(view, 68, "A-ASSOCIATE-RQ"):
        if item_type == 0x10:
            request.application_context = _text(value)
        elif item_type == 0x20:
            request.contexts.append(_parse_proposed_context(value))
        elif item_type == 0x50:
            _parse_user_information(value, request)
    return request


def _parse_proposed_context(value: memoryview) -> ProposedContext:
    if len(value) < 4:
        raise PDUError("presentation context item shorter than 4 bytes")
    abstract, syntaxes = "", []
    for sub_type, sub_value in _sub_items(value, 4, "presentation context"):
        if sub_type == 0x30:
            abstract = _text(sub_value)
        elif sub_type == 0x40:
            syntaxes.append(_text(sub_value))
    return ProposedContext(value[0], abstract, tuple(syntaxes))


def _parse_user_information(value: memoryview, request: AssociateRequest) -> None:
    for sub_type, sub_value in _sub_items(value, 0, "user information"):
        if sub_type == 0x51 and len(sub_value) >= 4:
            request.max_length = struct.unpack_from(">I", sub_value, 0)[0]
        elif sub_type == 0x52:
            request.implementation_class_uid = _text(sub_value)
        elif sub_type == 0x55:
            request.implementation_version = _text(sub_value)
        # role selection, asynchronous operations window, extended negotiation and user identity
        # are not supported: no reply item is sent, so the defaults apply (PS3.7 §D.3.3)


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _ae(title: str) -> bytes:
    return title.encode("ascii", errors="replace")[:16].ljust(16)


def encode_associate_ac(
    request: AssociateRequest,
    contexts: list[AcceptedContext],
    *,
    max_length: int,
    implementation_class_uid: str,
    implementation_version: str,
) -> bytes:
    """A-ASSOCIATE-AC echoing the request's AE titles, one result item per proposed context."""
    items = [_item(0x10, DICOM_APPLICATION_CONTEXT.encode())]
    for context in contexts:
        syntax = _item(0x40, context.transfer_syntax.encode())
        items.append(_item(0x21, bytes((context.context_id, 0, context.result, 0)) + syntax))
    user = (_item(0x51, struct.pack(">I", max_length))
            + _item(0x52, implementation_class_uid.encode())
            + _item(0x55, implementation_version.encode()))  # fmt: skip
    items.append(_item(0x50, user))
    fixed = struct.pack(">HH", 1, 0) + _ae(request.called_ae) + _ae(request.calling_ae) + bytes(32)
    return _pdu(A_ASSOCIATE_AC, fixed + b"".join(items))


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(A_ASSOCIATE_RJ, bytes((0, result, source, reason)))


def encode_release_rp() -> bytes:
    return _pdu(A_RELEASE_RP, bytes(4))


def encode_abort(source: int = ABORT_SOURCE_PROVIDER, reason: int = 0) -> bytes:
    return _pdu(A_ABORT, bytes((0, 0, source, reason)))


def encode_p_data(context_id: int, payload: bytes, *, command: bool, max_pdu: int) -> bytes:
    """P-DATA-TF PDUs carrying ``payload`` as one message part, fragmented to the peer's maximum
    PDU length (0: unlimited). Control header bit 0: command; bit 1: last fragment."""
    room = len(payload) if max_pdu == 0 else max(max_pdu - 6, 1)
    chunks = [payload[i : i + room] for i in range(0, len(payload), room)] or [b""]
    out = []
    for index, chunk in enumerate(chunks):
        control = (1 if command else 0) | (2 if index == len(chunks) - 1 else 0)
        pdv = struct.pack(">IBB", len(chunk) + 2, context_id, control) + chunk
        out.append(_pdu(P_DATA_TF, pdv))
    return b"".join(out)


@dataclass(frozen=True)
class PDV:
    """One presentation data value: a fragment of a command or data set."""

    context_id: int
    is_command: bool
    is_last: bool
    data: memoryview


PDV_HEADER = struct.Struct(">IBB")  # item length (context id + control + data), context id, control


def iter_pdvs(body: bytes | bytearray | memoryview) -> Iterator[PDV]:
    """The PDV items of a P-DATA-TF body, as views into it (no copy)."""
    view = memoryview(body)
    offset = 0
    if len(view) == 0:
        raise PDUError("P-DATA-TF without any presentation data value")
    while offset < len(view):
        if offset + 6 > len(view):
            raise PDUError("P-DATA-TF: PDV header runs past the end of the PDU")
        length = struct.unpack_from(">I", view, offset)[0]
        if length < 2 or offset + 4 + length > len(view):
            raise PDUError(f"P-DATA-TF: PDV length {length} does not fit the PDU")
        control = view[offset + 5]
        yield PDV(
            view[offset + 4],
            bool(control & 1),
            bool(control & 2),
            view[offset + 6 : offset + 4 + length],
        )
        offset += 4 + length
