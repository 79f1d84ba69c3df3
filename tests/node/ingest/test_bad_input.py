"""Bad input gets the right status (or a timeout) while a parallel association keeps working."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association as ScuAssociation
from pynetdicom.sop_class import CTImageStorage, Verification

from core.config import Settings
from core.domain import StoreStatus
from node.db.engine import Database
from node.ingest.scp import ReceiverHandle
from tests.node.ingest.conftest import StartReceiver
from tests.node.ingest.helpers import make_instance, stored_files

TIMEOUT_S = 3.0  # the good association acts well within it


@pytest.fixture
def quick_receiver(
    receiver_on: StartReceiver, sqlite_db: Database, settings: Settings
) -> ReceiverHandle:
    fast = settings.model_copy(update={"network_timeout_s": TIMEOUT_S, "acse_timeout_s": TIMEOUT_S,
                                       "dimse_timeout_s": TIMEOUT_S})  # fmt: skip
    return receiver_on(sqlite_db, fast)


@pytest.fixture
def good_association(quick_receiver: ReceiverHandle) -> Iterator[ScuAssociation]:
    """A well-behaved modality that sends one instance after every bad input."""
    ae = AE(ae_title="GOODMOD")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", quick_receiver.port, ae_title="PACSNODE")
    assert assoc.is_established
    yield assoc
    if assoc.is_established:
        assoc.release()


def _still_serving(assoc: ScuAssociation) -> None:
    """The parallel association still stores instances."""
    ds = pydicom.dcmread(BytesIO(make_instance()))
    assert assoc.send_c_store(ds).Status == 0x0000


def _keep_busy(assoc: ScuAssociation) -> None:
    assert assoc.send_c_echo().Status == 0x0000


@pytest.fixture(autouse=True)
def _send_files_undecoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make pynetdicom send a file's bytes as they are (it decodes and re-encodes otherwise)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def _send_file(port: int, raw: bytes, tmp_path: Path) -> int:
    path = tmp_path / "bad.dcm"
    path.write_bytes(raw)
    ae = AE(ae_title="BADMOD")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE")
    assert assoc.is_established
    status = assoc.send_c_store(path)  # pynetdicom sends the file's dataset bytes undecoded
    assoc.release()
    return int(status.Status)


def _patched(raw: bytes, find: bytes, replace_at: int, new: bytes) -> bytes:
    data = bytearray(raw)
    at = data.find(find, 132 + 100)
    assert at > 0
    data[at + replace_at : at + replace_at + len(new)] = new
    return bytes(data)


UID_TAG = struct.pack("<HH", 0x0008, 0x0018)
CASES = {
    "truncated": lambda raw: raw[: len(raw) - 40],  # the Pixel Data value runs past the end
    "wrong VR": lambda raw: _patched(raw, UID_TAG, 4, b"US"),
    "absurd length": lambda raw: _patched(
        raw, struct.pack("<HH2s", 0x0010, 0x0010, b"PN"), 6, b"\xff\xf0"
    ),
    "missing SOP Instance UID": lambda raw: _without_sop_uid(raw),
}


def _without_sop_uid(raw: bytes) -> bytes:
    ds = pydicom.dcmread(BytesIO(raw))
    del ds.SOPInstanceUID
    out = BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_dataset_gets_cannot_understand(
    case: str, quick_receiver: ReceiverHandle, good_association: ScuAssociation,
    tmp_path: Path, settings: Settings,
) -> None:  # fmt: skip
    status = _send_file(quick_receiver.port, CASES[case](make_instance(size=32)), tmp_path)
    assert status == StoreStatus.CANNOT_UNDERSTAND
    _still_serving(good_association)
    assert len(stored_files(settings)) == 1  # only the good instance


def _wait_until_closed(sock: socket.socket, good: ScuAssociation) -> bool:
    """Drain what the node sends until it closes the connection; keep the good peer busy."""
    sock.settimeout(0.5)
    deadline = time.monotonic() + 4 * TIMEOUT_S + 5
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            _keep_busy(good)  # served while the bad peer sits there
        except ConnectionResetError:
            return True
    return False


def test_random_bytes_on_the_port(
    quick_receiver: ReceiverHandle, good_association: ScuAssociation
) -> None:
    with socket.create_connection(("127.0.0.1", quick_receiver.port), timeout=10) as sock:
        sock.sendall(os.urandom(8192))
        assert _wait_until_closed(sock, good_association)
    _still_serving(good_association)


def test_connection_that_never_sends_is_closed(
    quick_receiver: ReceiverHandle, good_association: ScuAssociation
) -> None:
    with socket.create_connection(("127.0.0.1", quick_receiver.port), timeout=10) as sock:
        assert _wait_until_closed(sock, good_association)
    _still_serving(good_association)


def test_idle_association_times_out(
    quick_receiver: ReceiverHandle, good_association: ScuAssociation
) -> None:
    ae = AE(ae_title="IDLEMOD")
    ae.add_requested_context(CTImageStorage)
    idle = ae.associate("127.0.0.1", quick_receiver.port, ae_title="PACSNODE")
    assert idle.is_established
    deadline = time.monotonic() + 4 * TIMEOUT_S + 5
    while idle.is_alive() and time.monotonic() < deadline:
        time.sleep(0.5)
        _keep_busy(good_association)
    assert not idle.is_established  # the node dropped it after network_timeout_s
    _still_serving(good_association)
