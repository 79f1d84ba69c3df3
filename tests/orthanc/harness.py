"""A real Orthanc 1.10 process on free loopback ports, for integration tests.

Storage and index live in a temporary folder, so ``stop()`` then ``start()`` brings back the same
Orthanc with its content (used to test "destination down, then back"). Optionally loads the Python
plugin with a given script and extra configuration (the node's hook section).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port

ORTHANC_BIN = shutil.which("Orthanc")
PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class OrthancProcess:
    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        modalities: dict[str, list[Any]] | None = None,
        python_script: Path | None = None,
        dicomweb: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.process: subprocess.Popen[bytes] | None = None
        plugins = []
        config: dict[str, Any] = {
            "Name": "pacsnode-test",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": modalities or {},
            "DicomCheckCalledAet": False,
            "StableAge": 2,
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 8,
        }
        if python_script is not None:
            plugins.append(str(PYTHON_PLUGIN))
            config["PythonScript"] = str(python_script)
            config["PythonVerbose"] = False
        if dicomweb:
            plugins.append(str(DICOMWEB_PLUGIN))
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        config["Plugins"] = plugins
        config.update(extra or {})
        self.config = config
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = workdir / "orthanc.log"

    def start(self, timeout_s: float = 30.0) -> None:
        assert ORTHANC_BIN, "Orthanc is not installed"
        env = dict(os.environ, TCP_NODELAY="1")
        self.process = subprocess.Popen(
            [ORTHANC_BIN, "--logdir=" + str(self.workdir), str(self.config_path)],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {self.process.returncode}: {self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/system", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not start in {timeout_s}s: {self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def log_tail(self, chars: int = 3000) -> str:
        text = ""
        for log in sorted(self.workdir.glob("*.log")):
            text += log.read_text(errors="replace")
        return text[-chars:]

    # -- REST helpers for assertions -----------------------------------------------------------
    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def instances_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of the study as Orthanc holds it (with its MainDicomTags)."""
        found = httpx.post(
            f"{self.url}/tools/find",
            json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
            timeout=10,
        )
        found.raise_for_status()
        return list(found.json())

    def sop_uids_of_study(self, study_uid: str) -> list[str]:
        return [i["MainDicomTags"]["SOPInstanceUID"] for i in self.instances_of_study(study_uid)]


@contextmanager
def running_orthanc(workdir: Path, **kwargs: Any) -> Iterator[OrthancProcess]:
    orthanc = OrthancProcess(workdir, **kwargs)
    orthanc.start()
    try:
        yield orthanc
    finally:
        orthanc.stop()
