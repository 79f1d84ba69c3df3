"""The listener's upper layer on the wire: rejections and DIMSE commands it does not serve,
driven by a raw socket with PDUs encoded and decoded by pynetdicom (an independent codec)."""

from __future__ import annotations

import socket
import struct
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_FIND_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_FIND
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_RELEASE_RQ

from node.ingest import upper_layer as ul
from node.ingest.scp import ReceiverHandle
from tests.node.ingest.test_upper_layer import CT, EXPLICIT, pynetdicom_request

pytestmark = pytest.mark.integration


def _read_pdu(sock: socket.socket) -> bytes:
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        assert chunk, "connection closed"
        header += chunk
    length = struct.unpack(">I", header[2:])[0]
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return header + body


def _connect(receiver: ReceiverHandle, request: bytes) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", receiver.port), timeout=10)
    sock.sendall(request)
    return sock, _read_pdu(sock)


@pytest.mark.parametrize(("patch", "expected"), [
    (lambda raw: raw[:6] + b"\x00\x02" + raw[8:], (1, 2, 2)),  # protocol version bit 0 clear
    (lambda raw: raw.replace(ul.DICOM_APPLICATION_CONTEXT.encode(), b"1.2.840.10008.3.1.1.9"), (1, 1, 2)),
])  # fmt: skip
def test_bad_association_requests_are_rejected_with_the_standard_reason(
    receiver: ReceiverHandle, patch: object, expected: tuple[int, int, int]
) -> None:
    raw = patch(pynetdicom_request([(CT, [EXPLICIT])]))  # type: ignore[operator]
    sock, answer = _connect(receiver, raw)
    with sock:
        assert answer[0] == ul.A_ASSOCIATE_RJ
        rejection = A_ASSOCIATE_RJ()
        rejection.decode(answer)
        assert (rejection.result, rejection.source, rejection.reason_diagnostic) == expected


def _command(message: object, context_id: int) -> bytes:
    raw = encode(message.command_set, True, True)  # type: ignore[attr-defined]
    assert raw is not None
    return ul.encode_p_data(context_id, raw, command=True, max_pdu=0)


def _response(sock: socket.socket) -> Dataset:
    pdu = _read_pdu(sock)
    assert pdu[0] == ul.P_DATA_TF
    [pdv] = list(ul.iter_pdvs(pdu[6:]))
    assert pdv.is_command and pdv.is_last
    return decode(BytesIO(bytes(pdv.data)), True, True)


def test_unsupported_command_is_answered_and_the_association_goes_on(
    receiver: ReceiverHandle,
) -> None:
    sock, answer = _connect(
        receiver, pynetdicom_request([(CT, [EXPLICIT]), ("1.2.840.10008.1.1", [EXPLICIT])])
    )
    with sock:
        accepted = A_ASSOCIATE_AC()
        accepted.decode(answer)
        find = C_FIND()
        find.MessageID, find.AffectedSOPClassUID, find.Priority = 5, CT, 0
        find.Identifier = BytesIO(b"")
        message = C_FIND_RQ()
        message.primitive_to_message(find)
        message.command_set.CommandDataSetType = 0x0101  # no identifier follows
        sock.sendall(_command(message, 1))
        response = _response(sock)
        assert response.CommandField == 0x8020 and response.MessageIDBeingRespondedTo == 5
        assert response.Status == 0x0211  # unrecognised operation

        echo = C_ECHO()
        echo.MessageID, echo.AffectedSOPClassUID = 6, "1.2.840.10008.1.1"
        message = C_ECHO_RQ()
        message.primitive_to_message(echo)
        sock.sendall(_command(message, 3))
        assert _response(sock).Status == 0x0000

        sock.sendall(A_RELEASE_RQ().encode())
        assert _read_pdu(sock)[0] == ul.A_RELEASE_RP


def test_data_on_a_context_that_was_not_accepted_aborts(receiver: ReceiverHandle) -> None:
    sock, answer = _connect(receiver, pynetdicom_request([("1.2.3.999", [EXPLICIT])]))
    with sock:
        assert answer[0] == ul.A_ASSOCIATE_AC
        sock.sendall(ul.encode_p_data(1, b"\x00" * 12, command=True, max_pdu=0))
        assert _read_pdu(sock)[0] == ul.A_ABORT
