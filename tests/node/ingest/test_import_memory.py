"""Importing a large instance (``pacsnode import``, the console upload, a zip member) never holds it
in memory: the file is parsed from a mapping and copied to the spool in 1 MiB reads. The import
runs in a child process whose peak resident set (``VmHWM``) is compared with its size before."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import PROJECT_ROOT
from tests.node.ingest.helpers import CT_IMAGE_STORAGE

pytestmark = pytest.mark.slow

MAX_GROWTH_MB = 200  # the bound for any single upload
SIZE_MB = 400


def big_instance(path: Path, megabytes: int) -> Path:
    """A CT instance of about ``megabytes`` MB of pixel data (16-bit frames of 2048²)."""
    from pydicom.dataset import Dataset

    frames = max(1, megabytes * (1 << 20) // (2048 * 2048 * 2))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "CT", "BIG1", "Big^Import"
    ds.Rows = ds.Columns = 2048
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = np.zeros((frames, 2048, 2048), np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from core.config import load_settings
    from node.db.engine import open_database
    from node.ingest.importer import import_paths

    def kib(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])

    settings = load_settings(data_dir=sys.argv[1], database_url="")
    db = open_database(settings)
    import_paths(db, settings, [Path("/dev/null")])  # import machinery warm, nothing stored
    before = kib("VmRSS")
    report = import_paths(db, settings, [Path(sys.argv[2])])
    print(report.stored, (kib("VmHWM") - before) // 1024)
    """
)


def _import_growth_mb(data_dir: Path, source: Path) -> tuple[int, int]:
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(data_dir), str(source)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    stored, growth = run.stdout.split()[-2:]
    return int(stored), int(growth)


def test_a_large_file_is_imported_without_holding_it(tmp_path: Path) -> None:
    source = big_instance(tmp_path / "big.dcm", SIZE_MB)
    stored, growth = _import_growth_mb(tmp_path / "data", source)
    assert stored == 1
    assert growth < MAX_GROWTH_MB, f"import grew the process by {growth} MB"
    spooled = [p for p in (tmp_path / "data" / "spool").rglob("*.dcm")]
    assert len(spooled) == 1 and spooled[0].read_bytes()[-64:] == source.read_bytes()[-64:]


def test_a_large_zip_member_is_inflated_to_disk_not_memory(tmp_path: Path) -> None:
    source = big_instance(tmp_path / "big.dcm", SIZE_MB)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:  # ratio 1: no bomb
        zf.write(source, "big.dcm")
    source.unlink()
    stored, growth = _import_growth_mb(tmp_path / "data", archive)
    assert stored == 1
    assert growth < MAX_GROWTH_MB, f"import grew the process by {growth} MB"
    assert not list((tmp_path / "data" / "uploads").rglob("member.*"))  # staging removed
