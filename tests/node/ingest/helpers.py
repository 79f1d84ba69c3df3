"""Helpers for ingest tests: tiny instances and DCMTK runners."""

from __future__ import annotations

import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from core.config import Settings
from node.ingest.header import parse_instance

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def make_instance(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    size: int = 8,
    modality: str = "CT",
    instance_number: int = 1,
    patient_name: str = "Test^Patient",
) -> bytes:
    """A small, valid Part-10 CT instance (explicit VR little endian)."""
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = "P1"
    ds.StudyDate = "20260101"
    ds.StudyDescription = "Ingest test"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(size * size, dtype=np.uint16) % 4096).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dataset_part(raw: bytes) -> bytes:
    """The bytes after the file meta (what travels in a C-STORE)."""
    return raw[parse_instance(raw).dataset_offset :]


def stored_files(settings: Settings) -> list[Path]:
    return (
        sorted(p for p in settings.spool_dir.rglob("*.dcm")) if settings.spool_dir.exists() else []
    )


def run_dcmtk(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


needs_dcmtk = pytest.mark.skipif(
    shutil.which("storescu") is None, reason="DCMTK (storescu/echoscu/storescp) is not installed"
)


def write_instances(folder: Path, count: int, studies: int, size: int = 8) -> dict[str, Path]:
    """``count`` small instances spread over ``studies`` studies, as files: SOP UID -> path."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study_uids = [generate_uid() for _ in range(studies)]
    series_uids = [generate_uid() for _ in range(studies)]
    files: dict[str, Path] = {}
    for index in range(count):
        sop = generate_uid()
        raw = make_instance(study_uid=study_uids[index % studies], series_uid=series_uids[index % studies],
                            sop_uid=sop, size=size, instance_number=index + 1)  # fmt: skip
        path = folder / f"{index:05d}.dcm"
        path.write_bytes(raw)
        files[sop] = path
    return files


def acknowledged_problems(db_url: str, data_dir: Path, acknowledged: dict[str, Path]) -> list[str]:
    """Every acknowledged instance must have a row and a file with the dataset bytes sent, and
    every study exactly one Study row. Returns human-readable problems (empty: all good).

    Shared by the crash test; the job half ("each study gets exactly one job") can be checked
    on the same database by the grouping/jobs tests.
    """
    from sqlalchemy import func, select

    from node.db.engine import Database
    from node.db.orm import Instance, Study

    problems: list[str] = []
    db = Database(db_url)
    try:
        with db.read() as session:
            rows = dict(
                session.execute(select(Instance.sop_instance_uid, Instance.path)).tuples().all()
            )
            study_rows = session.execute(
                select(Study.study_instance_uid, func.count()).group_by(Study.study_instance_uid)
            ).all()
    finally:
        db.dispose()
    for sop, sent_path in acknowledged.items():
        relative = rows.get(sop)
        if relative is None:
            problems.append(f"{sop}: acknowledged but no row")
            continue
        stored = data_dir / relative
        if not stored.exists():
            problems.append(f"{sop}: row without file {relative}")
        elif dataset_part(stored.read_bytes()) != dataset_part(sent_path.read_bytes()):
            problems.append(f"{sop}: stored bytes differ from what was sent")
    problems += [f"study {uid}: {n} Study rows" for uid, n in study_rows if n != 1]
    return problems
