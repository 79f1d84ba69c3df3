"""The Orthanc Python-plugin hook script, loaded by a real Orthanc: posts stable studies, retries,
never blocks Orthanc."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SHARED_DATA, free_port
from tests.orthanc.harness import ORTHANC_BIN, PYTHON_PLUGIN, OrthancProcess

pytestmark = pytest.mark.integration
HOOK_SCRIPT = Path(__file__).resolve().parents[2] / "orthanc" / "pacsnode_hook.py"
MR_SERIES = SHARED_DATA / "mr-series-ge-adc"


class Recorder:
    """A tiny HTTP server standing in for the node: records every hook post."""

    def __init__(self, port: int) -> None:
        self.posts: list[tuple[dict[str, Any], dict[str, str]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.posts.append((json.loads(body), dict(self.headers)))
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def hooked_orthanc(tmp_path: Path, hook_port: int) -> OrthancProcess:
    if ORTHANC_BIN is None or not PYTHON_PLUGIN.exists():
        pytest.skip("Orthanc with the Python plugin (orthanc-python) not installed")
    section = {"HookUrl": f"http://127.0.0.1:{hook_port}/api/hooks/orthanc", "HookSecret": "s3cret"}
    return OrthancProcess(
        tmp_path / "orthanc", python_script=HOOK_SCRIPT, extra={"Pacsnode": section}
    )


def upload_one(orthanc: OrthancProcess) -> str:
    if not MR_SERIES.is_dir():
        pytest.skip(f"shared sample data not found at {MR_SERIES}")
    path = sorted(MR_SERIES.glob("*.dcm"))[0]
    started = time.monotonic()
    response = httpx.post(f"{orthanc.url}/instances", content=path.read_bytes(), timeout=10)
    response.raise_for_status()
    assert time.monotonic() - started < 2  # the hook never slows Orthanc down
    return str(response.json()["ParentStudy"])


def wait_for(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def hook_port() -> int:
    return free_port()


@pytest.fixture
def orthanc(tmp_path: Path, hook_port: int) -> Iterator[OrthancProcess]:
    process = hooked_orthanc(tmp_path, hook_port)
    process.start()
    yield process
    process.stop()


@pytest.mark.slow
def test_stable_study_is_posted_with_the_secret(orthanc: OrthancProcess, hook_port: int) -> None:
    recorder = Recorder(hook_port)
    try:
        study_id = upload_one(orthanc)
        assert wait_for(lambda: recorder.posts, 15), orthanc.log_tail()
        body, headers = recorder.posts[0]
        assert body["study_id"] == study_id
        assert headers["X-Pacsnode-Hook-Secret"] == "s3cret"
    finally:
        recorder.close()


@pytest.mark.slow
def test_node_down_then_up_the_post_is_retried(orthanc: OrthancProcess, hook_port: int) -> None:
    study_id = upload_one(orthanc)  # nobody listens on the hook port yet
    time.sleep(4)  # stable after 2 s, first attempt(s) fail
    assert orthanc.get("/system")  # Orthanc still answers
    recorder = Recorder(hook_port)
    try:
        assert wait_for(lambda: recorder.posts, 20), orthanc.log_tail()
        assert recorder.posts[0][0]["study_id"] == study_id
    finally:
        recorder.close()
