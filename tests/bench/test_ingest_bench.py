"""bench/ingest.py: the pynetdicom baseline receiver stores for real, --workdir is created, and
the first run waits for a disk that recent deletions slowed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.conftest import free_port
from tests.processes import wait_for_port

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _ct_instance(index: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.InstanceNumber = "BENCH", "CT", index
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = bytes(32)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.mark.parametrize("options", [[], ["--no-fsync"]], ids=["durable", "no-fsync"])
def test_pynetdicom_receiver_writes_every_instance(tmp_path: Path, options: list[str]) -> None:
    port, out = free_port(), tmp_path / "received"
    script = BENCH / "pynetdicom_scp.py"
    proc = subprocess.Popen([sys.executable, str(script), str(port), str(out), *options])
    try:
        wait_for_port(port, timeout=30)
        ae = AE(ae_title="BENCHSCU")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="PYNETDICOM")
        assert assoc.is_established
        sent = [_ct_instance(i) for i in range(3)]
        statuses = [assoc.send_c_store(ds).Status for ds in sent]
        assoc.release()
    finally:
        proc.terminate()
        proc.wait(30)
    assert statuses == [0x0000] * 3
    stored = {dcmread(path).SOPInstanceUID for path in out.glob("*.dcm")}
    assert stored == {ds.SOPInstanceUID for ds in sent}


def test_workdir_is_created_when_missing(tmp_path: Path) -> None:
    ingest = _load("ingest")
    workdir = tmp_path / "does" / "not" / "exist"
    folder = ingest.bench_folder(workdir)
    assert folder.is_dir() and folder.parent == workdir


def test_the_first_run_waits_until_file_creation_is_fast_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probes of 467 and 120 us (deletions in the last minutes), then 20 us: the runs start after
    the third probe, which the footer reports; with no time to wait, after the first."""
    ingest = _load("ingest")
    probes = iter([467.0, 120.0, 20.0])
    folders: list[str] = []

    def probe(folder: Path) -> float:
        folders.append(folder.name)
        return next(probes)

    monkeypatch.setattr(ingest, "create_probe_us", probe)
    monkeypatch.setattr(ingest, "SETTLE_EVERY_S", 0.01)
    assert ingest.settled_probe_us(tmp_path, 60) == 20.0
    assert folders == ["probe-before-0", "probe-before-1", "probe-before-2"]
    probes = iter([467.0, 20.0])
    assert ingest.settled_probe_us(tmp_path, 0) == 467.0  # --settle 0: no wait


@pytest.mark.slow
@pytest.mark.integration
def test_both_pacsnode_receivers_run_in_one_bench(tmp_path: Path) -> None:
    """--only pacsnode-1 pacsnode-n: each receiver's run gets a folder of its own (both used to
    be named after the receiver's first 8 letters, "pacsnode", and the second run failed)."""
    venv_bin = str(Path(sys.executable).parent)
    path = ":".join(p for p in os.environ["PATH"].split(":") if p != venv_bin)  # DCMTK's storescu
    run = subprocess.run(
        [sys.executable, str(BENCH / "ingest.py"), "--quick", "--repeat", "1", "--corpora", "b",
         "--count", "8", "--associations", "1", "--only", "pacsnode-1", "pacsnode-n",
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": path},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| (b) 1 assoc")]
    assert [row.split("|")[2].strip() for row in rows] == [
        "pacsnode (1 process, durable)",
        "pacsnode (2 processes, durable)",
    ]


def test_the_footer_flags_a_full_page_cache() -> None:
    """Writes into a full page cache wait for reclaim (the module doc: 423/s against 628/s)."""
    ingest = _load("ingest")
    assert ingest.memory_note(19.0) == "19.0 GB free memory before the first run"
    assert "page cache full" in ingest.memory_note(ingest.LOW_FREE_GB - 0.1)
    assert ingest.free_memory_gb() > 0
