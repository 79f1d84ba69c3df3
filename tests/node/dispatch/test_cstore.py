"""C-STORE sender against a real DCMTK storescp: stored objects, syntax fallback, unreachable peer."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from core.config import DestinationSettings
from core.domain import ArtifactKind, DestinationKind
from node.dispatch.targets import sender_for
from tests.conftest import free_port
from tests.node.dispatch.conftest import StoreScp, start_storescp
from tests.node.dispatch.factory import MadeObject, ct_slice

pytestmark = pytest.mark.integration

UNCOMPRESSED = {str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)}


def dicom_dest(port: int, **kwargs: object) -> DestinationSettings:
    return DestinationSettings(
        name="pacs",
        kind=DestinationKind.DICOM,
        ae_title="STORESCP",
        host="127.0.0.1",
        port=port,
        **kwargs,
    )


def test_sends_every_result_object_and_reports_each(
    storescp: StoreScp, results: dict[ArtifactKind, MadeObject]
) -> None:
    paths = [results[k].path for k in results]
    outcomes = sender_for(dicom_dest(storescp.port)).send(paths)
    assert [o.ok for o in outcomes] == [True] * 4, [o.error for o in outcomes]
    assert [o.sop_instance_uid for o in outcomes] == [results[k].sop_instance_uid for k in results]
    assert set(storescp.received()) == {results[k].sop_instance_uid for k in results}


def test_compressed_object_is_decompressed_for_a_peer_that_only_takes_uncompressed(
    storescp: StoreScp, tmp_path: Path
) -> None:
    ds = ct_slice(tmp_path / "ct.dcm", "1.2.3.4")
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "ct-rle.dcm", enforce_file_format=True)
    [outcome] = sender_for(dicom_dest(storescp.port)).send([tmp_path / "ct-rle.dcm"])
    assert outcome.ok, outcome.error
    assert storescp.received()[str(ds.SOPInstanceUID)] in UNCOMPRESSED


def test_preferred_syntax_is_used_when_the_peer_accepts_it(tmp_path: Path) -> None:
    port = free_port()
    folder = tmp_path / "rle-peer"
    proc = start_storescp(folder, port, "+xr")  # prefers (accepts) RLE Lossless
    try:
        ct_slice(tmp_path / "ct.dcm", "1.2.3.4")
        dest = dicom_dest(port, preferred_transfer_syntax=str(RLELossless))
        [outcome] = sender_for(dest).send([tmp_path / "ct.dcm"])
        assert outcome.ok, outcome.error
        stored = next(p for p in folder.rglob("*") if p.is_file())
        assert dcmread(stored).file_meta.TransferSyntaxUID == RLELossless
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_unreachable_peer_fails_every_object_quickly(
    results: dict[ArtifactKind, MadeObject],
) -> None:
    started = time.monotonic()
    sender = sender_for(dicom_dest(free_port()), timeout_s=5)
    outcomes = sender.send([results[ArtifactKind.SEG].path, results[ArtifactKind.SR].path])
    assert [o.ok for o in outcomes] == [False, False]
    assert "unreachable" in outcomes[0].error
    assert not sender.ping().ok
    assert time.monotonic() - started < 10


def test_unreadable_file_fails_alone(
    storescp: StoreScp, results: dict[ArtifactKind, MadeObject], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    outcomes = sender_for(dicom_dest(storescp.port)).send([junk, results[ArtifactKind.PDF].path])
    assert not outcomes[0].ok and "unreadable" in outcomes[0].error
    assert outcomes[1].ok


def test_ping_is_a_c_echo(storescp: StoreScp) -> None:
    result = sender_for(dicom_dest(storescp.port)).ping()
    assert result.ok and "C-ECHO" in result.detail


def make_tls_material(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the peer's) and its key."""
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = folder / "peer.key", folder / "peer.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return key, cert


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_tls_peer_verified_by_its_ca(
    tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    key, cert = make_tls_material(tmp_path / "tls")
    port = free_port()
    proc = start_storescp(tmp_path / "tls-peer", port, "+tls", str(key), str(cert), "-ic", "+py")
    try:
        good = dicom_dest(port, tls=True, tls_ca_file=cert)
        [outcome] = sender_for(good).send([results[ArtifactKind.SEG].path])
        assert outcome.ok, outcome.error
        [untrusted] = sender_for(dicom_dest(port, tls=True), timeout_s=3).send(
            [results[ArtifactKind.SR].path]
        )
        assert not untrusted.ok  # a self-signed peer is refused without its CA
        [plain] = sender_for(dicom_dest(port), timeout_s=3).send([results[ArtifactKind.PDF].path])
        assert not plain.ok  # a plain association to a TLS port fails, it does not hang
    finally:
        proc.terminate()
        proc.wait(timeout=10)
