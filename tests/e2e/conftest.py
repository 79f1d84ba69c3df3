"""End-to-end harness: real Orthanc, real ``pacsnode serve``, real DCMTK, all on loopback ports.

The checks are what a PACS user would look at: the study in Orthanc holds SEG, SR, PDF and overlay
series, each object passes ``dciodvfy``, and the SR references the SEG.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.conftest import free_port
from tests.orthanc.harness import ORTHANC_BIN, PYTHON_PLUGIN, OrthancProcess
from tests.processes import NodeProcess, node_env, wait_for_port

HOOK_SCRIPT = Path(__file__).resolve().parents[2] / "orthanc" / "pacsnode_hook.py"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"
PMAP_CLASS = "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
REQUIRED_MODULES = ("app.runtime", "pipelines.registry", "node.results.produce")


def require_whole_chain() -> None:
    """The e2e tests need every stage; skip with the missing part named until it has landed."""
    for tool in ("storescu", "dciodvfy"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if ORTHANC_BIN is None:
        pytest.skip("Orthanc not installed")
    for module in REQUIRED_MODULES:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} has not landed yet")


def write_ct_phantom(out: Path, slices: int = 24, size: int = 96, seed: int = 3) -> list[Path]:
    """A CT phantom study with lesions (the demo models were trained on such phantoms)."""
    from models.training.dicom_export import write_series
    from models.training.phantoms import make_3d_phantom

    phantom = make_3d_phantom(
        np.random.default_rng(seed), shape=(slices, size, size), lesion_count=2
    )
    return write_series(phantom, out, patient_id=f"E2E{seed:03d}")


def write_cr_phantom(out: Path, seed: int = 7) -> list[Path]:
    from models.training.dicom_export import write_series
    from models.training.phantoms import make_2d_phantom

    return write_series(make_2d_phantom(np.random.default_rng(seed), lesion_count=2), out, modality="CR",
                        patient_id=f"E2ECR{seed:03d}")  # fmt: skip


def storescu(port: int, aec: str, files: list[Path]) -> None:
    subprocess.run(
        ["storescu", "-aec", aec, "-aet", "MODALITY", "127.0.0.1", str(port), *map(str, files)],
        check=True, capture_output=True, timeout=180, env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def study_uid_of(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


@dataclass
class Node:
    process: NodeProcess
    dicom_port: int
    web_port: int
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        self.process.terminate()


def start_node(tmp_path: Path, extra_env: dict[str, str]) -> Node:
    dicom_port, web_port = free_port(), free_port()
    data_dir = tmp_path / "node-data"
    env = node_env(data_dir, f"sqlite:///{data_dir / 'pacsnode.db'}", dicom_port, web_port, {
        "PACSNODE_COMPLETION__QUIET_PERIOD_S": "1",
        "PACSNODE_COMPLETION__SWEEP_INTERVAL_S": "0.3",
        "PACSNODE_JOBS__POLL_INTERVAL_S": "0.2",
        "PACSNODE_DISPATCH__POLL_INTERVAL_S": "0.2",
        "PACSNODE_SECRET_KEY": "e2e-secret-key-not-for-production",
        **extra_env,
    })  # fmt: skip
    web_port = int(env["PACSNODE_WEB_PORT"])  # a test may have fixed it (Orthanc's hook URL)
    process = NodeProcess(["serve"], env, tmp_path / "logs", "serve").start()
    wait_for_port(dicom_port, timeout=120, proc=process)
    wait_for_port(web_port, timeout=120, proc=process)
    return Node(process, dicom_port, web_port, data_dir, env)


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Node] = []

    def factory(extra_env: dict[str, str]) -> Node:
        node = start_node(tmp_path, extra_env)
        started.append(node)
        return node

    yield factory
    for node in started:
        code = node.process.terminate()
        print(f"--- pacsnode serve (exit {code}) ---\n{node.process.output()[-6000:]}")


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[OrthancProcess] = []

    def factory(
        *, node_dicom_port: int | None = None, hook_port: int | None = None
    ) -> OrthancProcess:
        modalities = (
            {"pacsnode": ["PACSNODE", "127.0.0.1", node_dicom_port]} if node_dicom_port else {}
        )
        kwargs: dict[str, Any] = {"modalities": modalities}
        if hook_port is not None:
            if not PYTHON_PLUGIN.exists():
                pytest.skip("orthanc-python plugin not installed")
            kwargs["python_script"] = HOOK_SCRIPT
            kwargs["extra"] = {"Pacsnode": {"HookUrl": f"http://127.0.0.1:{hook_port}/api/hooks/orthanc",
                                            "HookSecret": "e2e-hook-secret"}}  # fmt: skip
        orthanc = OrthancProcess(tmp_path / f"orthanc{len(started)}", **kwargs)
        orthanc.start()
        started.append(orthanc)
        return orthanc

    yield factory
    for orthanc in started:
        orthanc.stop()


# -- what the PACS user checks ----------------------------------------------------------------
def result_instances(
    orthanc: OrthancProcess, study_uid: str, source_uids: set[str]
) -> dict[str, bytes]:
    """SOP Instance UID -> file bytes for every instance in the study that the node produced."""
    out: dict[str, bytes] = {}
    for item in orthanc.instances_of_study(study_uid):
        uid = item["MainDicomTags"]["SOPInstanceUID"]
        if uid not in source_uids:
            out[uid] = httpx.get(f"{orthanc.url}/instances/{item['ID']}/file", timeout=30).content
    return out


def classify(files: dict[str, bytes]) -> dict[str, list[Dataset]]:
    kinds: dict[str, list[Dataset]] = {"seg": [], "sr": [], "pdf": [], "overlay": [], "pmap": []}
    for raw in files.values():
        ds = dcmread(BytesIO(raw))
        sop_class = str(ds.SOPClassUID)
        kind = ("seg" if sop_class == SEG_CLASS else "pdf" if sop_class == PDF_CLASS
                else "pmap" if sop_class == PMAP_CLASS  # the explanation (demo-2d)
                else "sr" if sop_class.startswith(SR_PREFIX) else "overlay")  # fmt: skip
        kinds[kind].append(ds)
    return kinds


def wait_for_results(
    orthanc: OrthancProcess, study_uid: str, source_uids: set[str], timeout_s: float
) -> dict[str, bytes]:
    deadline = time.monotonic() + timeout_s
    files: dict[str, bytes] = {}
    while time.monotonic() < deadline:
        try:
            files = result_instances(orthanc, study_uid, source_uids)
        except httpx.HTTPError:
            files = {}
        kinds = classify(files) if files else {}
        if kinds and all(kinds[k] for k in ("seg", "sr", "pdf", "overlay")):
            time.sleep(1.0)  # let any straggler land, then take the final picture
            return result_instances(orthanc, study_uid, source_uids)
        time.sleep(0.5)
    return files


def referenced_uids(ds: Dataset) -> set[str]:
    found: set[str] = set()
    for elem in ds.iterall():
        if elem.keyword == "ReferencedSOPInstanceUID":
            found.add(str(elem.value))
    return found


def dciodvfy_errors(raw: bytes, tmp: Path) -> list[str]:
    path = tmp / "check.dcm"
    path.write_bytes(raw)
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def assert_results_in_orthanc(files: dict[str, bytes], tmp: Path) -> dict[str, list[Dataset]]:
    kinds = classify(files)
    assert all(kinds[k] for k in ("seg", "sr", "pdf", "overlay")), {
        k: len(v) for k, v in kinds.items()
    }
    for uid, raw in files.items():
        errors = dciodvfy_errors(raw, tmp)
        assert not errors, f"{uid}: dciodvfy errors: {errors[:10]}"
    seg_uids = {str(ds.SOPInstanceUID) for ds in kinds["seg"]}
    for sr in kinds["sr"]:
        assert seg_uids & referenced_uids(sr), "the SR does not reference the SEG"
    return kinds


def json_env(value: object) -> str:
    return json.dumps(value)
