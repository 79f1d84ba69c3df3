"""A 12-bit JPEG Extended image C-STOREd to the node, compressed as the modality sent it, gets a
job outcome (the pipeline ran, results were made), not a decode error.

pydicom-data's ``JPEG-lossy.dcm`` is an NM image whose scan header is malformed (DCMTK decodes it
with a warning; libjpeg, GDCM and Pillow refuse it). NM has no pipeline in the shipped
definitions, so this node runs a copy of demo-2d that also selects NM (the subject is the decode
path, not the choice of pipeline).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file
from pynetdicom import AE
from sqlalchemy import select

from core.config import PROJECT_ROOT
from node.db.engine import Database
from node.db.orm import Job
from tests.e2e.conftest import json_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"


def _pipelines_with_nm(folder: Path) -> Path:
    shutil.copytree(PROJECT_ROOT / "pipelines" / "definitions", folder)
    path = folder / "demo-2d.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["selection"]["rules"].append({"modality": ["NM"], "max_frames_per_instance": 1})
    path.write_text(yaml.safe_dump(spec))
    return folder


def test_c_store_of_12_bit_jpeg_extended_gets_a_job_outcome(
    tmp_path: Path, node_factory: Any
) -> None:
    source = get_testdata_file("JPEG-lossy.dcm")
    if source is None:
        pytest.skip("pydicom-data not installed")
    node = node_factory({
        "PACSNODE_PIPELINES_DIR": str(_pipelines_with_nm(tmp_path / "pipelines")),
        "PACSNODE_ROUTING": json_env([{"name": "nm", "when": {"modality": ["NM"]},
                                       "pipelines": ["demo-2d"], "destinations": []}]),
    })  # fmt: skip
    ds = pydicom.dcmread(source)
    assert ds.file_meta.TransferSyntaxUID == JPEG_EXTENDED and ds.BitsStored == 12
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, JPEG_EXTENDED)  # no uncompressed fallback offered
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="PACSNODE")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    db = Database(node.env["PACSNODE_DATABASE_URL"])
    deadline = time.monotonic() + 240
    job: Job | None = None
    while time.monotonic() < deadline:
        with db.read() as session:
            job = session.scalars(select(Job)).first()
            if job is not None and job.state in ("succeeded", "failed"):
                session.expunge(job)
                break
        time.sleep(0.5)
    assert job is not None, "no job was created for the study"
    assert job.state == "succeeded", f"{job.state}: {job.error[-2000:]}"
    assert "decode" not in job.error
    stored = next((node.data_dir / "spool").rglob("*.dcm"), None) or next(
        node.data_dir.rglob("*.dcm")
    )
    assert pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == (
        JPEG_EXTENDED
    )
