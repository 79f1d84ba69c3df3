"""Bounded resources per peer, and PS3.8 on the wire: duplicate presentation context IDs, A-ABORT
reasons, whole-phase deadlines a slow drip cannot extend, the bound on connections still
negotiating, and the largest instance accepted."""

from __future__ import annotations

import socket
import struct
import time
from io import BytesIO

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.sop_class import CTImageStorage

from core.config import Settings
from core.domain import StoreStatus
from node.db.engine import Database
from node.ingest import upper_layer as ul
from node.ingest.scp import WATCH_INTERVAL_S, ReceiverHandle
from tests.node.ingest.conftest import StartReceiver
from tests.node.ingest.helpers import CT_IMAGE_STORAGE, make_instance, stored_files
from tests.node.ingest.test_acknowledgement import c_store_rq
from tests.node.ingest.test_scp_protocol import _connect, _read_pdu
from tests.node.ingest.test_upper_layer import EXPLICIT, pynetdicom_request

DEADLINE_S = 1.0
SLACK_S = WATCH_INTERVAL_S + 1.0  # watchdog period plus a loaded machine's scheduling


def _closed_after(sock: socket.socket, drip: bytes, every_s: float, limit_s: float) -> float:
    """Send ``drip`` one byte every ``every_s`` until the node closes; seconds until it did."""
    start = time.monotonic()
    sock.settimeout(every_s)
    for byte in drip:
        try:
            sock.sendall(bytes([byte]))
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except OSError:  # reset, broken pipe
            return time.monotonic() - start
        assert time.monotonic() - start < limit_s, "the node let a slow drip go on"
    raise AssertionError("ran out of bytes to drip")


@pytest.fixture
def strict_receiver(
    receiver_on: StartReceiver, sqlite_db: Database, settings: Settings
) -> ReceiverHandle:
    strict = settings.model_copy(update={"acse_timeout_s": DEADLINE_S, "dimse_timeout_s": DEADLINE_S,
                                         "network_timeout_s": 5.0, "max_pending_connections": 2,
                                         "max_instance_mb": 0.01})  # fmt: skip
    return receiver_on(sqlite_db, strict)


def test_a_slow_drip_cannot_hold_association_negotiation(strict_receiver: ReceiverHandle) -> None:
    request = pynetdicom_request([(CT_IMAGE_STORAGE, [EXPLICIT])])
    with socket.create_connection(("127.0.0.1", strict_receiver.port), timeout=10) as sock:
        took = _closed_after(sock, request, 0.2, DEADLINE_S + SLACK_S + 2)
    assert DEADLINE_S - 0.1 <= took <= DEADLINE_S + SLACK_S


def test_a_slow_drip_cannot_hold_a_dimse_message(strict_receiver: ReceiverHandle) -> None:
    sock, answer = _connect(strict_receiver, pynetdicom_request([(CT_IMAGE_STORAGE, [EXPLICIT])]))
    with sock:
        assert answer[0] == ul.A_ASSOCIATE_AC
        command = ul.encode_p_data(
            1, c_store_rq(CT_IMAGE_STORAGE.encode(), b"1.2.3"), command=True, max_pdu=0
        )
        start = time.monotonic()
        sock.sendall(command[:7])
        sock.settimeout(0.2)
        aborted = b""
        for byte in command[7:] * 10:
            try:
                sock.sendall(bytes([byte]))
                aborted += sock.recv(64)
            except TimeoutError:
                continue
            except OSError:
                break
            if aborted:
                break
        took = time.monotonic() - start
    assert aborted[:1] == bytes([ul.A_ABORT]) and aborted[8:10] == bytes(
        [2, 0]
    )  # provider, reason 0
    assert DEADLINE_S - 0.1 <= took <= DEADLINE_S + SLACK_S


def test_connections_still_negotiating_are_bounded(strict_receiver: ReceiverHandle) -> None:
    silent = [socket.create_connection(("127.0.0.1", strict_receiver.port)) for _ in range(2)]
    try:
        time.sleep(0.2)  # both accepted and counted
        with socket.create_connection(("127.0.0.1", strict_receiver.port), timeout=5) as third:
            start = time.monotonic()
            assert third.recv(1) == b""  # closed at once, not after the ACSE deadline
            assert time.monotonic() - start < DEADLINE_S / 2
    finally:
        for sock in silent:
            sock.close()
    time.sleep(0.3)
    ae = AE(ae_title="AFTER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", strict_receiver.port, ae_title="PACSNODE")
    assert assoc.is_established  # the slots came back
    assoc.release()


def test_an_instance_over_max_instance_mb_is_refused_and_the_association_goes_on(
    strict_receiver: ReceiverHandle, settings: Settings
) -> None:
    ae = AE(ae_title="BIGSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", strict_receiver.port, ae_title="PACSNODE")
    assert assoc.is_established
    try:
        big = pydicom.dcmread(BytesIO(make_instance(size=128)))  # 32 KiB of pixels > 0.01 MB
        small = pydicom.dcmread(BytesIO(make_instance(size=8)))
        assert assoc.send_c_store(big).Status == StoreStatus.OUT_OF_RESOURCES
        assert assoc.send_c_store(small).Status == StoreStatus.SUCCESS
    finally:
        assoc.release()
    [stored] = stored_files(settings)
    assert pydicom.dcmread(stored).SOPInstanceUID == small.SOPInstanceUID
    assert not list((settings.spool_dir / ".incoming").glob("*"))


def test_duplicate_presentation_context_ids_are_not_echoed(receiver: ReceiverHandle) -> None:
    """300 contexts with IDs 1, 3, ..., 255 over and over: each ID is answered once."""
    request = bytearray(pynetdicom_request([(CT_IMAGE_STORAGE, [EXPLICIT])] * 128))
    item = request.index(b"\x20\x00", 68)  # the first presentation context item
    length = struct.unpack(">H", request[item + 2 : item + 4])[0] + 4
    contexts = bytes(request[item : item + 128 * length])
    again = contexts + contexts[: 44 * length]  # 172 more items reusing the same IDs
    body = request[6:item] + contexts + again + request[item + 128 * length :]
    sock, answer = _connect(
        receiver, bytes([ul.A_ASSOCIATE_RQ, 0]) + struct.pack(">I", len(body)) + body
    )
    with sock:
        accepted = A_ASSOCIATE_AC()
        accepted.decode(answer)
        ids = [cx.context_id for cx in accepted.presentation_context]
        assert len(ids) == len(set(ids)) == 128


@pytest.mark.parametrize(("first", "reason"), [
    (b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00", ul.ABORT_UNRECOGNIZED_PDU),  # no such PDU type
    (ul.encode_p_data(1, b"\x00" * 12, command=True, max_pdu=0), ul.ABORT_UNEXPECTED_PDU),  # before RQ
])  # fmt: skip
def test_abort_reasons_follow_table_9_26(
    receiver: ReceiverHandle, first: bytes, reason: int
) -> None:
    sock, answer = _connect(receiver, first)
    with sock:
        assert answer[0] == ul.A_ABORT and answer[8:10] == bytes([ul.ABORT_SOURCE_PROVIDER, reason])


def test_a_second_associate_request_is_an_unexpected_pdu(receiver: ReceiverHandle) -> None:
    request = pynetdicom_request([(CT_IMAGE_STORAGE, [EXPLICIT])])
    sock, answer = _connect(receiver, request)
    with sock:
        assert answer[0] == ul.A_ASSOCIATE_AC
        sock.sendall(request)
        abort = _read_pdu(sock)
        assert abort[0] == ul.A_ABORT and abort[9] == ul.ABORT_UNEXPECTED_PDU


def test_free_space_is_checked_again_while_a_data_set_streams_in(
    receiver: ReceiverHandle, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while a long data set arrives: 0xA700, and the partial file is gone."""
    from node.ingest import association
    from node.ingest.spool import InsufficientSpace

    calls: list[int] = []

    def filling_up(_settings: Settings, _incoming: int) -> None:
        calls.append(1)
        if len(calls) > 1:  # fine when the request arrives, full once data has come in
            raise InsufficientSpace("free space 1 MB is below min_free_disk_mb=500")

    monkeypatch.setattr(association, "check_free_space", filling_up)
    monkeypatch.setattr(association, "_SPACE_CHECK_EVERY", 16 << 10)
    ae = AE(ae_title="FILLSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="PACSNODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(pydicom.dcmread(BytesIO(make_instance(size=256))))
    finally:
        assoc.release()
    assert status.Status == StoreStatus.OUT_OF_RESOURCES and len(calls) >= 2
    assert stored_files(settings) == []
    assert not list((settings.spool_dir / ".incoming").glob("*"))
