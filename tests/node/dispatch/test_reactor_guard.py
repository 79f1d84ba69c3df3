"""pynetdicom's reactor can take the C-STORE response its own ``send_c_store`` waits for; with the
guard the response reaches the sender (``node/dispatch/reactor_guard.py``).

The race needs two threads to lose the GIL at the wrong moments, so it is forced here, as lost
GILs do: the reactor stalls right after passing its open checkpoint (``_is_paused`` still True),
and the sender stalls between sending its request and reading the response queue, so that the
response is there when the reactor polls. The peer is a real DCMTK storescp.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from node.dispatch import reactor_guard
from node.dispatch.cstore import CStoreSender
from tests.node.dispatch.conftest import StoreScp
from tests.node.dispatch.factory import ct_slice
from tests.node.dispatch.test_cstore import dicom_dest

pytestmark = pytest.mark.integration
STALL_S = 0.5  # far longer than storescp takes to answer on loopback


class _StallAfterPassing(threading.Event):
    """A reactor checkpoint: once ``armed``, the reactor that passes it open stalls once."""

    def __init__(self) -> None:
        super().__init__()
        self.set()
        self.armed = threading.Event()
        self.stalled = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        passed = super().wait(timeout)
        if self.armed.is_set() and not self.stalled.is_set():
            self.stalled.set()
            time.sleep(STALL_S)
        return passed


def _race_next_store(assoc: Association) -> None:
    """Make the next ``send_*`` on ``assoc`` start while the reactor sits in the race window, and
    read its response only after the reactor polled the queue."""
    checkpoint = _StallAfterPassing()
    assoc._reactor_checkpoint = checkpoint
    checkpoint.armed.set()
    assert checkpoint.stalled.wait(5), "the reactor never passed its checkpoint"
    dimse = assoc.dimse
    real_get_msg = dimse.get_msg

    def get_msg_late(block: bool = False) -> object:
        if block:  # the sender, once: after the reactor woke and polled
            del dimse.get_msg
            time.sleep(2 * STALL_S)
        return real_get_msg(block)

    dimse.get_msg = get_msg_late  # type: ignore[method-assign]


def _store_in_race(port: int, path: Path) -> int | None:
    ae = AE(ae_title="RACER")
    ae.dimse_timeout = 3
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
    assert assoc.is_established
    try:
        _race_next_store(assoc)
        status = assoc.send_c_store(path)
        return int(status.Status) if status else None
    finally:
        if assoc.is_established:
            assoc.release()


def test_unguarded_pynetdicom_loses_the_response(
    storescp: StoreScp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race exists (if pynetdicom fixes it, this fails: drop the guard then)."""
    monkeypatch.setattr(Association, "_serve_request", reactor_guard._ORIGINAL)
    ds = ct_slice(tmp_path / "ct.dcm", "1.2.3.4")
    started = time.monotonic()
    assert _store_in_race(storescp.port, tmp_path / "ct.dcm") is None  # DIMSE timeout, abort
    assert time.monotonic() - started >= 3
    assert str(ds.SOPInstanceUID) in storescp.received()  # stored, but never acknowledged


def test_guarded_store_gets_its_response(storescp: StoreScp, tmp_path: Path) -> None:
    reactor_guard.install()
    ct_slice(tmp_path / "ct.dcm", "1.2.3.4")
    started = time.monotonic()
    assert _store_in_race(storescp.port, tmp_path / "ct.dcm") == 0x0000
    assert time.monotonic() - started < 2 * STALL_S + 2


def test_delivery_in_the_race_sends_the_whole_batch(
    storescp: StoreScp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a PACS admin sees: every object of the batch delivered, no 30 s stall, no abort."""
    paths = [tmp_path / f"ct{i}.dcm" for i in range(3)]
    sops = [str(ct_slice(path, f"1.2.3.{i}").SOPInstanceUID) for i, path in enumerate(paths)]
    real_associate = CStoreSender._associate

    def associate_in_race(self: CStoreSender, contexts: list) -> Association | None:
        assoc = real_associate(self, contexts)
        if assoc is not None:
            _race_next_store(assoc)
        return assoc

    monkeypatch.setattr(CStoreSender, "_associate", associate_in_race)
    started = time.monotonic()
    outcomes = CStoreSender(dicom_dest(storescp.port), timeout_s=5).send(paths)
    assert [o.ok for o in outcomes] == [True] * 3, [o.error for o in outcomes]
    assert set(sops) <= set(storescp.received())
    assert time.monotonic() - started < 5
