"""Memory stays flat whatever a peer sends: a 1 GiB instance in 16 KiB PDUs is streamed to disk,
and 1 GiB of data set fragments that never end does not pile up. The receiver runs in its own
process (a one-child receiver pool) so its RSS can be sampled from ``/proc``."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from core.config import Settings
from node.db.engine import Database
from node.ingest import upper_layer as ul
from node.ingest.receiver_pool import PoolHandle, start_receiver_pool
from tests.node.ingest.helpers import CT_IMAGE_STORAGE, stored_files
from tests.node.ingest.test_acknowledgement import c_store_rq
from tests.node.ingest.test_scp_protocol import _read_pdu, _response
from tests.node.ingest.test_upper_layer import EXPLICIT, pynetdicom_request

pytestmark = pytest.mark.slow

GIB = 1 << 30
PDU_BYTES = 16 << 10  # the PDU size a default pynetdicom or DCMTK sender uses
ROOM = PDU_BYTES - 6  # data bytes per PDV in such a PDU
MAX_GROWTH_MB = 100
FRAME = 512 * 512 * 2


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


class PeakRSS(threading.Thread):
    """Samples a process's resident set every 20 ms until stopped; ``peak`` in MB."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._stop_event = pid, rss_mb(pid), threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> PeakRSS:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop_event.set()
        self.join()


@pytest.fixture
def pool(sqlite_db: Database, settings: Settings) -> Iterator[PoolHandle]:
    handle = start_receiver_pool(settings, processes=1)
    yield handle
    handle.stop(timeout=10)


def header_bytes(sop_uid: str, pixel_bytes: int) -> bytes:
    """A CT data set (Explicit VR Little Endian) up to the Pixel Data value of ``pixel_bytes``."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "BIG", "CT"
    ds.SamplesPerPixel, ds.Rows, ds.Columns, ds.BitsAllocated = 1, 512, 512, 16
    ds.NumberOfFrames = pixel_bytes // FRAME
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)


def associate(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=600)
    sock.sendall(pynetdicom_request([(CT_IMAGE_STORAGE, [EXPLICIT])]))
    assert _read_pdu(sock)[0] == ul.A_ASSOCIATE_AC
    return sock


def send_data(sock: socket.socket, head: bytes, zeros: int, *, final: bool) -> None:
    """``head`` then ``zeros`` zero bytes as data set PDVs of one 16 KiB PDU each."""
    pdv = struct.Struct(">BBIIBB")  # PDU type, reserved, PDU length, PDV length, context, control
    if head:
        sock.sendall(pdv.pack(ul.P_DATA_TF, 0, len(head) + 6, len(head) + 2, 1, 0) + head)
    chunk = bytes(ROOM)
    full = pdv.pack(ul.P_DATA_TF, 0, PDU_BYTES, ROOM + 2, 1, 0) + chunk
    left = zeros
    while left > ROOM:
        sock.sendall(full)
        left -= ROOM
    control = 2 if final else 0
    sock.sendall(pdv.pack(ul.P_DATA_TF, 0, left + 6, left + 2, 1, control) + bytes(left))


def test_a_1_gib_instance_in_16_kib_pdus_is_streamed(pool: PoolHandle, settings: Settings) -> None:
    pid = pool.processes[0].pid
    assert pid is not None
    sop = generate_uid()
    with associate(pool.port) as sock:
        baseline = rss_mb(pid)
        with PeakRSS(pid) as rss:
            sock.sendall(ul.encode_p_data(1, c_store_rq(CT_IMAGE_STORAGE.encode(), sop.encode()),
                                          command=True, max_pdu=PDU_BYTES))  # fmt: skip
            head = header_bytes(sop, GIB)
            send_data(sock, head, GIB, final=True)
            response = _response(sock)
        sock.sendall(bytes([ul.A_RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
    assert response.Status == 0x0000 and response.AffectedSOPInstanceUID == sop
    [stored] = stored_files(settings)
    try:
        assert stored.stat().st_size > GIB + len(head)
    finally:
        stored.unlink()
    growth = rss.peak - baseline
    print(f"receiver RSS {baseline:.0f} MB, peak {rss.peak:.0f} MB (+{growth:.0f} MB) for 1 GiB")
    assert growth < MAX_GROWTH_MB


def test_1_gib_of_never_final_fragments_does_not_grow_the_receiver(
    pool: PoolHandle, settings: Settings
) -> None:
    pid = pool.processes[0].pid
    assert pid is not None
    with associate(pool.port) as sock:
        baseline = rss_mb(pid)
        with PeakRSS(pid) as rss:
            sock.sendall(ul.encode_p_data(1, c_store_rq(CT_IMAGE_STORAGE.encode(), b"1.2.3.4"),
                                          command=True, max_pdu=PDU_BYTES))  # fmt: skip
            send_data(sock, b"", GIB, final=False)
            time.sleep(0.5)
    growth = rss.peak - baseline
    print(f"receiver RSS {baseline:.0f} MB, peak {rss.peak:.0f} MB (+{growth:.0f} MB) for 1 GiB")
    assert growth < MAX_GROWTH_MB
    incoming = settings.spool_dir / ".incoming"
    deadline = time.monotonic() + 30
    while list(incoming.glob("*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(incoming.glob("*")), "the partial data set was left on disk"
    assert stored_files(settings) == []
