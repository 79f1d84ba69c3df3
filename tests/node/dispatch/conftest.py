"""Real peers for dispatch tests: DCMTK ``storescp`` and Orthanc, on free loopback ports."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from core.config import Settings
from core.domain import ArtifactKind
from node.db.engine import Database
from node.db.orm import Artifact, Job, Study
from tests.conftest import free_port
from tests.node.dispatch.factory import MadeObject, make_results
from tests.orthanc.harness import ORTHANC_BIN, OrthancProcess


@dataclass
class StoreScp:
    ae_title: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    def received(self) -> dict[str, str]:
        """SOP Instance UID -> transfer syntax, for every file the peer wrote."""
        out: dict[str, str] = {}
        for path in self.folder.rglob("*"):
            if path.is_file():
                ds = dcmread(path, stop_before_pixels=True)
                out[str(ds.SOPInstanceUID)] = str(ds.file_meta.TransferSyntaxUID)
        return out


def start_storescp(folder: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(folder), "-uf", *extra, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("storescp did not start")


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreScp]:
    if shutil.which("storescp") is None:
        pytest.skip("DCMTK storescp not installed")
    peer = StoreScp("STORESCP", free_port(), tmp_path / "storescp")
    peer.process = start_storescp(peer.folder, peer.port)
    yield peer
    peer.process.terminate()
    peer.process.wait(timeout=10)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancProcess]:
    if ORTHANC_BIN is None:
        pytest.skip("Orthanc not installed")
    process = OrthancProcess(tmp_path / "orthanc", dicomweb=True)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def results(tmp_path: Path) -> dict[ArtifactKind, MadeObject]:
    return make_results(tmp_path / "results")


def add_job_with_artifacts(
    db: Database,
    settings: Settings,
    made: dict[ArtifactKind, MadeObject],
    *,
    validated: bool = True,
    source: str = "dicom",
    peer_host: str = "",
) -> int:
    """A study, a succeeded job and one Artifact row per made object; returns the job id."""
    study_uid = str(dcmread(made[ArtifactKind.SEG].path, stop_before_pixels=True).StudyInstanceUID)
    with db.write() as session:
        study = Study(
            study_instance_uid=study_uid, state="complete", source=source, peer_host=peer_host
        )
        job = Job(study=study, pipeline_name="test", state="succeeded")
        session.add_all([study, job])
        for kind, obj in made.items():
            session.add(
                Artifact(
                    job=job,
                    kind=kind.value,
                    sop_class_uid=obj.sop_class_uid,
                    sop_instance_uid=obj.sop_instance_uid,
                    series_instance_uid=obj.series_instance_uid,
                    path=str(obj.path),
                    size_bytes=obj.path.stat().st_size,
                    validated=validated,
                )
            )
        session.flush()
        return job.id


def with_destinations(
    settings: Settings, destinations: list[dict[str, object]], **dispatch: object
) -> Settings:
    """The test settings plus destinations and dispatch tuning (validated like a real config)."""
    data = settings.model_dump()
    data["destinations"] = destinations
    data["dispatch"] = {**data["dispatch"], **dispatch}
    for key, value in list(dispatch.items()):
        if key == "orthanc_sources":
            data["orthanc_sources"] = value
            data["dispatch"].pop(key)
    return Settings(**data)
