"""The acknowledgement means what it says: the data set must be the one the command announced, its
UIDs must be UIDs, and a failure response names no UID; the same mismatches get the same status
from DCMTK storescp; every retired storage class is stored byte for byte from storescu."""

from __future__ import annotations

import logging
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, _config

from core.config import Settings
from core.domain import StoreStatus
from node.ingest import upper_layer as ul
from node.ingest.contexts import RETIRED_STORAGE_CLASSES, VERIFICATION
from node.ingest.header import parse_instance
from node.ingest.scp import ReceiverHandle
from tests.conftest import free_port
from tests.node.ingest.helpers import (
    CT_IMAGE_STORAGE,
    dataset_part,
    make_instance,
    needs_dcmtk,
    run_dcmtk,
    stored_files,
)
from tests.node.ingest.test_scp_protocol import _connect, _response
from tests.node.ingest.test_upper_layer import EXPLICIT, pynetdicom_request

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
STUDY = "1.2.3.4.5"  # odd length: padded with one NUL, so a same-length edit keeps the encoding


# -- a hand-made C-STORE, so the command can say what pynetdicom would never send ----------------
def _uid_value(raw: bytes) -> bytes:
    return raw + b"\0" if len(raw) % 2 else raw


def c_store_rq(sop_class: bytes | None, sop_instance: bytes | None, message_id: int = 1) -> bytes:
    elements = {0x0100: struct.pack("<H", 0x0001), 0x0110: struct.pack("<H", message_id),
                0x0700: struct.pack("<H", 0), 0x0800: struct.pack("<H", 0x0000)}  # fmt: skip
    if sop_class is not None:
        elements[0x0002] = _uid_value(sop_class)
    if sop_instance is not None:
        elements[0x1000] = _uid_value(sop_instance)
    body = b"".join(struct.pack("<HHI", 0, tag, len(v)) + v for tag, v in sorted(elements.items()))
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def c_echo_rq(message_id: int) -> bytes:
    elements = [(0x0002, _uid_value(VERIFICATION.encode())), (0x0100, struct.pack("<H", 0x0030)),
                (0x0110, struct.pack("<H", message_id)), (0x0800, struct.pack("<H", 0x0101))]  # fmt: skip
    body = b"".join(struct.pack("<HHI", 0, tag, len(v)) + v for tag, v in elements)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def instance(sop_uid: str) -> bytes:
    return dataset_part(make_instance(study_uid=STUDY, sop_uid=sop_uid))


# (command SOP Class UID, command SOP Instance UID, data set edit) -> expected status
SOP = "1.2.826.0.1.3680043.8.498.77"
RAW_CASES = {
    "matching": (CT_IMAGE_STORAGE.encode(), SOP.encode(), lambda ds: ds, 0x0000),
    "no (0000,1000)": (CT_IMAGE_STORAGE.encode(), None, lambda ds: ds, 0xC000),
    "no (0000,0002)": (None, SOP.encode(), lambda ds: ds, 0xC000),
    "non-ASCII command instance UID": (CT_IMAGE_STORAGE.encode(), SOP.encode()[:-2] + b"\xe9\xff",
                                       lambda ds: ds, 0xC000),  # fmt: skip
    "non-ASCII command class UID": (b"1.2.840.10008.5.1.4.1.1.\xc3\xa9", SOP.encode(),
                                    lambda ds: ds, 0xC000),  # fmt: skip
    "letters in the command UID": (CT_IMAGE_STORAGE.encode(), SOP.encode() + b"a",
                                   lambda ds: ds, 0xC000),  # fmt: skip
    "letters in a data set UID": (CT_IMAGE_STORAGE.encode(), SOP.encode(),
                                  lambda ds: ds.replace(b"1.2.3.4.5\0", b"1.2.3.4.a\0"), 0xC000),  # fmt: skip
    "non-ASCII in a data set UID": (CT_IMAGE_STORAGE.encode(), SOP.encode(),
                                    lambda ds: ds.replace(b"1.2.3.4.5\0", b"1.2.3.4.\xe9\0"), 0xC000),  # fmt: skip
    "data set names another instance": (CT_IMAGE_STORAGE.encode(), b"1.2.3.999", lambda ds: ds, 0xA900),
    "data set of another class": (MR_IMAGE_STORAGE.encode(), SOP.encode(), lambda ds: ds, 0xA900),
}  # fmt: skip


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_command_and_data_set_uids_decide_the_status(
    case: str, receiver: ReceiverHandle, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    sop_class, sop_instance, edit, expected = RAW_CASES[case]
    contexts = [
        (CT_IMAGE_STORAGE, [EXPLICIT]),
        (VERIFICATION, [EXPLICIT]),
        (MR_IMAGE_STORAGE, [EXPLICIT]),
    ]
    context = 5 if sop_class == MR_IMAGE_STORAGE.encode() else 1
    data = edit(instance(SOP))
    sock, answer = _connect(receiver, pynetdicom_request(contexts))
    with sock, caplog.at_level(logging.INFO):
        assert answer[0] == ul.A_ASSOCIATE_AC
        sock.sendall(ul.encode_p_data(context, c_store_rq(sop_class, sop_instance, 7), command=True, max_pdu=0)
                     + ul.encode_p_data(context, data, command=False, max_pdu=0))  # fmt: skip
        response = _response(sock)
        assert response.Status == expected and response.MessageIDBeingRespondedTo == 7
        if expected == 0x0000:  # a success names the stored instance ...
            assert response.AffectedSOPInstanceUID == SOP
            assert response.AffectedSOPClassUID == CT_IMAGE_STORAGE
        else:  # ... a failure none: nothing was stored
            assert (
                "AffectedSOPInstanceUID" not in response and "AffectedSOPClassUID" not in response
            )
        sock.sendall(ul.encode_p_data(3, c_echo_rq(8), command=True, max_pdu=0))
        assert _response(sock).Status == 0x0000  # the association goes on
    stored = stored_files(settings)
    assert len(stored) == (1 if expected == 0 else 0)
    if stored:
        assert dataset_part(stored[0].read_bytes()) == data
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
    if expected != 0:
        assert any("refus" in r.getMessage() for r in caplog.records), "no log line says why"
    assert not list((settings.spool_dir / ".incoming").glob("*")), "a temp file was left"


# -- the same mismatches, sent by pynetdicom to the node and to DCMTK storescp -------------------
@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[int]:
    if shutil.which("storescp") is None:
        pytest.skip("DCMTK storescp is not installed")
    port, out = free_port(), tmp_path / "storescp"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while run_dcmtk("echoscu", "-aec", "STORESCP", "127.0.0.1", str(port)).returncode != 0:
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def mismatched_file(folder: Path, what: str) -> Path:
    """A Part-10 file whose file meta (where pynetdicom takes the command's UIDs from, in its
    chunked mode) names another instance or class than the data set holds."""
    ds = pydicom.dcmread(BytesIO(make_instance()))
    if what == "instance":
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    else:
        ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    path = folder / f"{what}.dcm"
    ds.save_as(path)  # as read, preamble included; enforce_file_format would re-align the meta
    return path


def pynetdicom_status(port: int, called: str, path: Path) -> int:
    ae = AE(ae_title="MISMATCH")
    ae.add_requested_context(CT_IMAGE_STORAGE, EXPLICIT)
    ae.add_requested_context(MR_IMAGE_STORAGE, EXPLICIT)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


@needs_dcmtk
@pytest.mark.integration
@pytest.mark.parametrize("what", ["instance", "class"])
def test_mismatch_gets_the_status_storescp_gives(
    what: str, receiver: ReceiverHandle, storescp: int, settings: Settings, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    path = mismatched_file(tmp_path, what)
    ours = pynetdicom_status(receiver.port, "PACSNODE", path)
    dcmtk = pynetdicom_status(storescp, "STORESCP", path)
    assert ours == dcmtk == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert stored_files(settings) == []


# -- retired storage classes, from DCMTK storescu ---------------------------------------------
@needs_dcmtk
@pytest.mark.integration
def test_storescu_stores_every_retired_class_byte_for_byte(
    receiver: ReceiverHandle, settings: Settings, tmp_path: Path
) -> None:
    sent: dict[str, bytes] = {}
    paths = []
    for index, sop_class in enumerate(RETIRED_STORAGE_CLASSES):
        ds = pydicom.dcmread(BytesIO(make_instance(instance_number=index + 1)))
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        path = tmp_path / f"retired-{index:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
        sent[str(ds.SOPInstanceUID)] = dataset_part(path.read_bytes())
    # --required: a context for exactly the files' classes (storescu's default list has none of them)
    result = run_dcmtk(
        "storescu", "--required", "-aec", "PACSNODE", "127.0.0.1", str(receiver.port), *paths
    )
    assert result.returncode == 0, result.stderr
    stored = {
        parse_instance(p.read_bytes()).header.sop_instance_uid: p for p in stored_files(settings)
    }
    assert set(stored) == set(sent), f"not stored: {set(sent) - set(stored)}\n{result.stderr}"
    for sop, data in sent.items():
        raw = stored[sop].read_bytes()
        assert dataset_part(raw) == data
        assert parse_instance(raw).header.sop_class_uid in RETIRED_STORAGE_CLASSES


def test_several_messages_in_one_pdu_are_each_answered(
    receiver: ReceiverHandle, settings: Settings
) -> None:
    """A C-ECHO, then a whole C-STORE (command and data set) in the same P-DATA-TF PDU."""
    data = instance(SOP)
    pdvs = [
        (3, c_echo_rq(1), 3),
        (1, c_store_rq(CT_IMAGE_STORAGE.encode(), SOP.encode(), 2), 3),
        (1, data, 2),
    ]
    body = b"".join(struct.pack(">IBB", len(v) + 2, cx, control) + v for cx, v, control in pdvs)
    contexts = [(CT_IMAGE_STORAGE, [EXPLICIT]), (VERIFICATION, [EXPLICIT])]
    sock, answer = _connect(receiver, pynetdicom_request(contexts))
    with sock:
        assert answer[0] == ul.A_ASSOCIATE_AC
        sock.sendall(struct.pack(">BBI", ul.P_DATA_TF, 0, len(body)) + body)
        echo, store = _response(sock), _response(sock)
    assert (echo.MessageIDBeingRespondedTo, echo.Status) == (1, 0x0000)
    assert (store.MessageIDBeingRespondedTo, store.Status) == (2, 0x0000)
    [stored] = stored_files(settings)
    assert dataset_part(stored.read_bytes()) == data
