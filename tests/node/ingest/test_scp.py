"""The DICOM listener against real peers: DCMTK echoscu/storescu and a pynetdicom SCU.

"What was sent" is captured by DCMTK's own ``storescp +B`` (bit-preserving) receiving the same
send: storescu re-encodes datasets on its way out, so the original file is not the reference.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import func, select

from core.config import CallerAllowEntry, Settings
from node.db.engine import Database
from node.db.orm import Instance, Study
from node.db.repositories import config_overrides
from node.db.repositories.config_overrides import ALLOWLIST_OVERRIDE_KEY
from node.ingest.header import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, parse_instance
from node.ingest.scp import ReceiverHandle
from tests.conftest import SHARED_DATA, free_port
from tests.node.ingest.conftest import StartReceiver
from tests.node.ingest.helpers import (
    dataset_part,
    make_instance,
    needs_dcmtk,
    run_dcmtk,
    stored_files,
)

pytestmark = [needs_dcmtk, pytest.mark.integration]

# (pydicom test file, storescu flag that proposes its transfer syntax)
COMPRESSED = [
    ("CT_small.dcm", "-xe"),
    ("MR_small_bigendian.dcm", "-xb"),
    ("image_dfl.dcm", "-xd"),
    ("SC_rgb_jpeg_dcmtk.dcm", "-xy"),  # JPEG baseline
    ("JPEG-lossy.dcm", "-xx"),  # JPEG extended (12 bit)
    ("JPEG-LL.dcm", "-xs"),  # JPEG lossless SV1 (pydicom-data)
    ("MR_small_jpeg_ls_lossless.dcm", "-xt"),
    ("JPEGLSNearLossless_16.dcm", "-xu"),  # lacks study/series UIDs: added in the test
    ("JPEG2000.dcm", "-xw"),
    ("emri_small_jpeg_2k_lossless.dcm", "-xv"),
    ("MR_small_RLE.dcm", "-xr"),
]


@pytest.fixture
def reference_scp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp writing exactly what it receives (+B): the record of what storescu sent."""
    out = tmp_path / "reference"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        ["storescp", "+B", "+xa", "-od", str(out), "-aet", "PACSNODE", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(100):
        if (
            run_dcmtk("echoscu", "-aec", "PACSNODE", "127.0.0.1", str(port), timeout=10).returncode
            == 0
        ):
            break
        time.sleep(0.1)
    yield port, out
    proc.terminate()
    proc.wait(10)


def _storescu(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return run_dcmtk("storescu", "-aec", "PACSNODE", *args[:-1], "127.0.0.1", str(port), args[-1])


def _with_uids(path: str, workdir: Path) -> str:
    """Some test files lack Study/Series UIDs (the node rightly refuses those); add them."""
    ds = pydicom.dcmread(path)
    if "StudyInstanceUID" in ds and "SeriesInstanceUID" in ds:
        return path
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    fixed = workdir / Path(path).name
    ds.save_as(fixed)
    return str(fixed)


def _by_sop(paths: list[Path]) -> dict[str, bytes]:
    result = {}
    for path in paths:
        raw = path.read_bytes()
        result[parse_instance(raw).header.sop_instance_uid] = dataset_part(raw)
    return result


def test_echoscu(receiver: ReceiverHandle) -> None:
    result = run_dcmtk("echoscu", "-aec", "PACSNODE", "127.0.0.1", str(receiver.port))
    assert result.returncode == 0, result.stderr


def test_wrong_called_ae_is_rejected(receiver: ReceiverHandle) -> None:
    result = run_dcmtk("echoscu", "-aec", "SOMEONE", "127.0.0.1", str(receiver.port))
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr


def test_calling_ae_allowlist(
    receiver_on: StartReceiver, sqlite_db: Database, settings: Settings
) -> None:
    allow = settings.model_copy(update={"allowed_callers": [
        CallerAllowEntry(ae_title="GOODMOD"), CallerAllowEntry(ae_title="FARAWAY", host="10.9.9.9")]})  # fmt: skip
    port = str(receiver_on(sqlite_db, allow).port)
    assert (
        run_dcmtk("echoscu", "-aet", "GOODMOD", "-aec", "PACSNODE", "127.0.0.1", port).returncode
        == 0
    )
    for title in ("BADMOD", "FARAWAY"):  # unknown title; known title from the wrong host
        result = run_dcmtk("echoscu", "-aet", title, "-aec", "PACSNODE", "127.0.0.1", port)
        assert result.returncode != 0
        assert "Calling AE Title Not Recognized" in result.stderr


def test_the_console_allowlist_holds_from_the_first_association(
    receiver_on: StartReceiver, sqlite_db: Database
) -> None:
    """An allowlist an admin saved in the console (a database row; the YAML allows everyone)
    applies as soon as the receiver listens, not one refresh later."""
    with sqlite_db.write() as session:
        config_overrides.set_override(session, ALLOWLIST_OVERRIDE_KEY,
                                      {"entries": [{"ae_title": "GOODMOD"}]}, "admin")  # fmt: skip
    port = str(receiver_on(sqlite_db).port)
    refused = run_dcmtk("echoscu", "-aet", "BADMOD", "-aec", "PACSNODE", "127.0.0.1", port)
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr
    allowed = run_dcmtk("echoscu", "-aet", "GOODMOD", "-aec", "PACSNODE", "127.0.0.1", port)
    assert allowed.returncode == 0, allowed.stderr


@pytest.mark.parametrize(("name", "flag"), COMPRESSED)
def test_storescu_transfer_syntaxes_stored_as_sent(
    name: str,
    flag: str,
    receiver: ReceiverHandle,
    reference_scp: tuple[int, Path],
    settings: Settings,
) -> None:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not available from pydicom/pydicom-data")
    path = _with_uids(path, settings.data_dir.parent)
    ref_port, ref_dir = reference_scp
    sent = _storescu(ref_port, flag, "-R", path)
    assert sent.returncode == 0, sent.stderr
    result = _storescu(receiver.port, flag, "-R", path)
    assert result.returncode == 0, result.stderr
    ours, reference = _by_sop(stored_files(settings)), _by_sop(sorted(ref_dir.iterdir()))
    assert ours == reference and len(ours) == 1
    expected_ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    [stored] = stored_files(settings)
    assert parse_instance(stored.read_bytes()).header.transfer_syntax_uid == expected_ts


@pytest.mark.parametrize("max_send_pdu", ["4096", "131072"])
def test_data_sets_split_over_many_pdus_are_reassembled(
    max_send_pdu: str, receiver: ReceiverHandle, reference_scp: tuple[int, Path], settings: Settings
) -> None:
    """storescu cut to 4 KiB PDUs: a multi-frame MR (~100 KB) arrives in dozens of fragments."""
    path = get_testdata_file("emri_small.dcm")
    assert path is not None
    ref_port, ref_dir = reference_scp
    assert _storescu(ref_port, "--max-send-pdu", max_send_pdu, path).returncode == 0
    result = _storescu(receiver.port, "--max-send-pdu", max_send_pdu, path)
    assert result.returncode == 0, result.stderr
    ours, reference = _by_sop(stored_files(settings)), _by_sop(sorted(ref_dir.iterdir()))
    assert ours == reference and len(ours) == 1


@pytest.mark.skipif(
    not (SHARED_DATA / "mr-series-ge-adc").is_dir(), reason="../shared/data missing"
)
def test_storescu_folder_of_real_mr_series(
    receiver: ReceiverHandle,
    reference_scp: tuple[int, Path],
    settings: Settings,
    sqlite_db: Database,
) -> None:
    folder = str(SHARED_DATA / "mr-series-ge-adc")
    ref_port, ref_dir = reference_scp
    assert _storescu(ref_port, "+sd", "+sp", "*.dcm", folder).returncode == 0
    result = _storescu(receiver.port, "+sd", "+sp", "*.dcm", folder)
    assert result.returncode == 0, result.stderr
    ours = _by_sop(stored_files(settings))
    assert len(ours) == 20
    assert ours == _by_sop(sorted(ref_dir.iterdir()))
    with sqlite_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 20
        [study] = session.scalars(select(Study)).all()
        assert study.instance_count == 20 and study.modalities == "MR"
        assert study.calling_ae == "STORESCU" and study.called_ae == "PACSNODE"


def test_pynetdicom_scu_sends_raw_files_on_both_backends(
    receiver_on: StartReceiver, db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom (chunked mode) sends a file's dataset bytes untouched: the file is the reference."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    handle = receiver_on(db)
    names = ["CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "rtplan.dcm", "waveform_ecg.dcm"]
    paths = [get_testdata_file(n) for n in names]
    ae = AE(ae_title="PYSCU")
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", handle.port, ae_title="PACSNODE")
    assert assoc.is_established
    statuses = [assoc.send_c_store(Path(p)).Status for p in paths]
    assoc.release()
    # rtplan.dcm's file meta names another SOP Instance UID than its data set, and pynetdicom
    # takes the command's UID from the file meta: refused as storescp refuses it
    assert statuses == [0, 0, 0, 0xA900, 0]
    good = [p for p, status in zip(paths, statuses, strict=True) if status == 0]
    ours = _by_sop(stored_files(settings))
    assert len(ours) == len(good)
    for path in good:
        raw = Path(path).read_bytes()
        assert ours[parse_instance(raw).header.sop_instance_uid] == dataset_part(raw)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == len(good)


def test_max_associations(
    receiver_on: StartReceiver, sqlite_db: Database, settings: Settings
) -> None:
    handle = receiver_on(sqlite_db, settings.model_copy(update={"max_associations": 1}))
    ae = AE(ae_title="HOLDER")
    ae.requested_contexts = [build_context(Verification)]
    holder = ae.associate("127.0.0.1", handle.port, ae_title="PACSNODE")
    assert holder.is_established
    try:
        result = run_dcmtk("echoscu", "-aec", "PACSNODE", "127.0.0.1", str(handle.port))
        assert result.returncode != 0 and "Local Limit Exceeded" in result.stderr
    finally:
        holder.release()


def test_stop_refuses_new_associations_and_lets_running_ones_finish(
    receiver_on: StartReceiver, sqlite_db: Database, settings: Settings
) -> None:
    """SIGTERM semantics: the listening socket closes at once, an open association may finish."""
    handle = receiver_on(sqlite_db)
    ae = AE(ae_title="LASTMOD")
    ae.add_requested_context(CTImageStorage)
    running = ae.associate("127.0.0.1", handle.port, ae_title="PACSNODE")
    assert running.is_established
    stopper = threading.Thread(target=handle.stop, kwargs={"timeout": 30})
    stopper.start()
    time.sleep(0.5)
    refused = run_dcmtk("echoscu", "-to", "5", "-aec", "PACSNODE", "127.0.0.1", str(handle.port))
    assert refused.returncode != 0
    assert stopper.is_alive()  # waiting for the running association
    assert running.send_c_store(pydicom.dcmread(BytesIO(make_instance()))).Status == 0x0000
    running.release()
    stopper.join(10)
    assert not stopper.is_alive()
    assert len(stored_files(settings)) == 1


def test_accepted_sockets_are_tuned(receiver: ReceiverHandle) -> None:
    """Nagle off on every accepted socket, and an unlimited maximum PDU announced to the sender."""
    ae = AE(ae_title="PROBE")
    ae.requested_contexts = [build_context(Verification)]
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="PACSNODE")
    try:
        [server_side] = receiver.server.active_associations
        assert server_side.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert assoc.acceptor.maximum_length == 0  # unlimited PDU size, as the A-ASSOCIATE-AC said
        assert assoc.acceptor.implementation_class_uid == IMPLEMENTATION_CLASS_UID
        assert assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    finally:
        assoc.release()


NON_IMAGE_AND_MULTIFRAME = [
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR (TID 1500 reports)
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT (multi-frame)
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (burned-in overlays)
]


def test_result_and_multiframe_sop_classes_and_htj2k(
    receiver: ReceiverHandle, settings: Settings, sqlite_db: Database, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The SOP classes pacsnode itself writes back, plus HTJ2K (storescu 3.6.7 cannot send it)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="PYSCU")
    files: list[Path] = []
    for index, sop_class in enumerate(NON_IMAGE_AND_MULTIFRAME):
        ds = pydicom.dcmread(BytesIO(make_instance()))
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.NumberOfFrames = 1
        path = tmp_path / f"{index}.dcm"
        ds.save_as(path)
        files.append(path)
        ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")
    htj2k = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    htj2k.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"  # HTJ2K lossless; never decoded
    files.append(tmp_path / "htj2k.dcm")
    htj2k.save_as(files[-1])
    ae.add_requested_context(htj2k.SOPClassUID, "1.2.840.10008.1.2.4.201")
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="PACSNODE")
    assert assoc.is_established
    statuses = [assoc.send_c_store(path).Status for path in files]
    assoc.release()
    assert statuses == [0] * len(files)
    with sqlite_db.read() as session:
        stored = dict(
            session.execute(select(Instance.sop_class_uid, Instance.transfer_syntax_uid))
            .tuples()
            .all()
        )
    assert set(NON_IMAGE_AND_MULTIFRAME) <= set(stored)
    assert stored[htj2k.SOPClassUID] == "1.2.840.10008.1.2.4.201"
