"""Conformance of produced objects with external validators and a real PACS (Orthanc 1.10).

dciodvfy (dicom3tools) must report 0 errors, dsrdump (DCMTK) no errors, pixelmed's
DicomSRValidator no TID 1500 errors, and Orthanc must accept every object by C-STORE.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pydicom
import pytest
from pynetdicom import AE

from core.domain import ArtifactKind
from node.results.produce import OutputOptions, ProducedObject, produce_results
from tests.conftest import free_port
from tests.node.results.conftest import SOURCE_KINDS, load_sources
from tests.node.results.factories import make_result

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIXELMED = [
    "java",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
    "-Xss16m",
    "-cp",
    "/usr/share/java/pixelmed.jar",
    "com.pixelmed.validate.DicomSRValidator",
    "-checktemplateid",
]


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")


@pytest.fixture(
    scope="module",
    params=[(k, f) for k in SOURCE_KINDS for f in (True, False)],
    ids=lambda p: f"{p[0]}-{'findings' if p[1] else 'nofindings'}",
)
def produced(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, bool, list[ProducedObject]]:
    kind, with_findings = request.param
    sources = load_sources(kind)
    # with findings, the result also carries an explanation: its Parametric Map is gated too
    result = make_result(sources, with_findings=with_findings, explain=with_findings)
    out = tmp_path_factory.mktemp(kind)
    return kind, with_findings, produce_results(result, sources, OutputOptions(), out)


def test_dciodvfy_no_errors(produced) -> None:
    _need("dciodvfy")
    for obj in produced[2]:
        run = subprocess.run(["dciodvfy", str(obj.path)], capture_output=True, text=True)
        errors = [
            line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")
        ]
        assert errors == [], f"{obj.kind.value}: {errors}"


def test_dsrdump_no_errors(produced) -> None:
    _need("dsrdump")
    sr = next(o for o in produced[2] if o.kind == ArtifactKind.SR)
    run = subprocess.run(["dsrdump", str(sr.path)], capture_output=True, text=True)
    assert run.returncode == 0 and run.stderr.strip() == "", run.stderr


def test_pixelmed_no_tid1500_errors(produced) -> None:
    _need("java")
    _kind, _with_findings, objects = produced
    sr = next(o for o in objects if o.kind == ArtifactKind.SR)
    run = subprocess.run([*PIXELMED, str(sr.path)], capture_output=True, text=True, timeout=180)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], "\n".join(errors[:5])


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    _need("Orthanc")
    folder = tmp_path_factory.mktemp("orthanc")
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "pacsnode-test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "UnknownSopClassAccepted": True,
        "Plugins": [],
        "DicomServerEnabled": True,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        ["Orthanc", str(folder / "orthanc.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("Orthanc did not start")
        yield dicom_port, http_port
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_orthanc_accepts_every_object(produced, orthanc: tuple[int, int]) -> None:
    dicom_port, http_port = orthanc
    ae = AE(ae_title="PACSNODE")
    datasets = [pydicom.dcmread(o.path) for o in produced[2]]
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", dicom_port, ae_title="ORTHANC")
    assert assoc.is_established
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            assert status and status.Status == 0x0000, f"{ds.SOPClassUID.name}: {status}"
    finally:
        assoc.release()
    for obj in produced[2]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/tools/lookup",
            data=obj.sop_instance_uid.encode(),
            method="POST",
        )
        found = json.loads(urllib.request.urlopen(request, timeout=5).read())
        assert [f["Type"] for f in found] == ["Instance"], obj.kind.value
