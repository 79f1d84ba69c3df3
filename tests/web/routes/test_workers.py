"""Workers as the console sees them: ``/api/health`` flags each queue in use that no live worker
consumes, the jobs page warns about it and lists the workers, and a model's device can be set only
to one a live worker has. A real ``pacsnode worker`` process provides the heartbeat in the first
test; the others write registry rows and move the console's clock past their staleness. Health
also reports a DICOM receiver pool none of whose processes is left to answer (a real pool)."""

from __future__ import annotations

import html
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.config import Settings, load_settings
from node.db.engine import Database
from node.db.orm import utcnow
from node.db.repositories import workers as registry
from node.heartbeat import Heartbeat, Registration
from node.ingest import receiver_pool
from node.ingest.receiver_pool import start_receiver_pool
from tests.cluster import pipelines_dir
from tests.conftest import free_port
from tests.node.ingest.helpers import run_dcmtk
from tests.processes import NodeProcess, node_env
from tests.web.conftest import Clock, Console, csrf_of, make_console

HEARTBEAT_S, STALE_AFTER_BEATS = 0.5, 2


@pytest.fixture
def two_queues(settings: Settings, sqlite_db: Database, tmp_path: Path) -> Console:
    """demo-2d on queue ``cpu``, demo-3d on queue ``gpu``, a folder destination, fast beats."""
    folder = pipelines_dir(tmp_path, "cpu")
    text = (settings.pipelines_dir / "demo-3d.yaml").read_text()
    (folder / "demo-3d.yaml").write_text(text.replace("enabled: true", "enabled: true\nqueue: gpu"))
    data = settings.model_dump()
    data["pipelines_dir"] = folder
    data["jobs"] = {
        **data["jobs"],
        "heartbeat_s": HEARTBEAT_S,
        "stale_after_beats": STALE_AFTER_BEATS,
    }
    data["destinations"] = [{"name": "out", "kind": "folder", "path": str(tmp_path / "out")}]
    return make_console(load_settings(None, **data), sqlite_db)


@pytest.fixture
def later(two_queues: Console) -> Clock:
    """The console's clock, moved by the test past a worker's staleness instead of sleeping."""
    fake = Clock(utcnow())
    two_queues.app.state.web.clock = fake
    return fake


def _beat(db: Database, name: str, queues: list[str], devices: list[str]) -> None:
    with db.write() as session:
        registry.beat(
            session,
            name=name,
            host="hostA",
            engine="celery",
            queues=queues,
            devices=devices,
            pid=1,
            now=utcnow(),
        )


def _wait_for(check: Callable[[], bool], timeout: float, proc: NodeProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        assert proc.alive(), proc.output()[-3000:]
        time.sleep(0.2)
    raise TimeoutError(proc.output()[-3000:])


@pytest.mark.slow
def test_health_flags_the_queue_no_live_worker_consumes(
    two_queues: Console, tmp_path: Path
) -> None:
    console = two_queues
    client = console.client()
    env = node_env(
        console.settings.data_dir,
        console.db.url,
        free_port(),
        free_port(),
        {
            "PACSNODE_PIPELINES_DIR": str(console.settings.pipelines_dir),
            "PACSNODE_JOBS__HEARTBEAT_S": str(HEARTBEAT_S),
            "PACSNODE_TORCH_THREADS": "1",
        },
    )
    worker = NodeProcess(
        ["worker", "--engine", "local", "--queues", "cpu", "--worker-id", "w1@hostA"],
        env,
        tmp_path / "logs",
        "w1",
    ).start()
    try:

        def serving_cpu() -> bool:
            # the worker's model statuses name it before its first heartbeat (it loads the
            # models and the post-processing kernels in between): wait for the queue itself
            queues = client.get("/api/health").json()["queues"]
            return any(q["name"] == "cpu" and "w1@hostA" in q["workers"] for q in queues)

        _wait_for(serving_cpu, 120, worker)
        body = client.get("/api/health").json()
        queues = {q["name"]: q for q in body["queues"]}
        assert queues["cpu"]["workers"] == ["w1@hostA"] and queues["cpu"]["ok"]
        assert queues["gpu"] == {
            "name": "gpu",
            "serves": "pipelines demo-3d",
            "workers": [],
            "ok": False,
        }
        assert body["status"] == "degraded"
        # no dispatcher runs either: the delivery queue is flagged too
        assert body["problems"] == ["queue deliveries has no worker", "queue gpu has no worker"]
        worker.kill()  # no clean stop: the row stays, and goes stale
        killed = time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            body = client.get("/api/health").json()
            if "queue cpu has no worker" in body["problems"]:
                break
            time.sleep(0.2)
        stale_s = time.monotonic() - killed
        assert set(body["problems"]) >= {"queue cpu has no worker", "queue gpu has no worker"}
        assert stale_s < HEARTBEAT_S * STALE_AFTER_BEATS + 3
        print(f"cpu flagged {stale_s:.1f} s after its only worker was killed")
    finally:
        worker.terminate()


def test_health_is_ok_when_every_queue_has_a_live_worker(two_queues: Console, later: Clock) -> None:
    """The console's clock stays at the beats (``later``): a slow first request on a loaded
    machine must not age them past their 1 s staleness."""
    _beat(two_queues.db, "cpu1@hostA", ["cpu", "deliveries"], ["cpu"])
    _beat(two_queues.db, "gpu1@hostB", ["gpu"], ["cpu", "cuda:0"])
    body = two_queues.client().get("/api/health").json()
    assert body["status"] == "ok" and body["problems"] == []
    assert {q["name"]: q["ok"] for q in body["queues"]} == {
        "cpu": True,
        "deliveries": True,
        "gpu": True,
    }


def test_jobs_page_warns_about_a_queue_without_worker_and_lists_workers(
    two_queues: Console, later: Clock
) -> None:
    _beat(two_queues.db, "cpu1@hostA", ["cpu", "deliveries"], ["cpu"])
    page = two_queues.login("radiologist1").get("/jobs").text
    assert re.search(r'class="flash warning queue-warning">queue gpu has no worker', page)
    assert "queue cpu has no worker" not in page
    assert 'data-worker="cpu1@hostA" data-live="yes"' in page
    later.advance(seconds=HEARTBEAT_S * STALE_AFTER_BEATS + 1)
    page = two_queues.login("radiologist1").get("/jobs").text
    assert "queue cpu has no worker" in page and "queue deliveries has no worker" in page
    assert 'data-worker="cpu1@hostA" data-live="no"' in page


def test_model_device_is_chosen_from_live_workers_devices(
    two_queues: Console, later: Clock
) -> None:
    _beat(two_queues.db, "gpu1@hostB", ["gpu"], ["cpu", "cuda:0"])
    admin = two_queues.login("admin1")
    page = admin.get("/admin/pipelines").text
    select = re.search(
        r'<select name="segmentation.demo-seg-unet.device"[^>]*>(.*?)</select>', page, re.S
    )
    assert select, page
    options = re.findall(r'<option value="([^"]+)"', select.group(1))
    assert options == ["auto", "cpu", "cuda:0"]  # the current value (auto) first
    token = csrf_of(admin, "/admin/pipelines")
    field = "segmentation.demo-seg-unet.device"
    refused = admin.post(
        "/admin/pipelines/demo-2d", data={"csrf_token": token, "enabled": "on", field: "cuda:1"}
    )
    assert refused.status_code == 400
    assert "no live worker has device 'cuda:1'" in html.unescape(refused.text)
    accepted = admin.post(
        "/admin/pipelines/demo-2d", data={"csrf_token": token, "enabled": "on", field: "cuda:0"}
    )
    assert accepted.status_code == 303
    # the GPU host goes away: cuda:0 stays the current value (marked) and saving it again works
    later.advance(seconds=HEARTBEAT_S * STALE_AFTER_BEATS + 1)
    page = admin.get("/admin/pipelines").text
    assert "cuda:0 (no live worker has it)" in page
    again = admin.post(
        "/admin/pipelines/demo-2d", data={"csrf_token": token, "enabled": "on", field: "cuda:0"}
    )
    assert again.status_code == 303
    other = admin.post(
        "/admin/pipelines/demo-2d",
        data={
            "csrf_token": token,
            "enabled": "on",
            "segmentation.demo-seg-segresnet.device": "cuda:0",
        },
    )
    assert other.status_code == 400  # another model may not be moved to the vanished GPU


def _receiver_problems(console: Console) -> tuple[list[str], list[dict[str, object]]]:
    body = console.client().get("/api/health").json()
    return [p for p in body["problems"] if "receiver" in p], body["receivers"]


def _until(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``check`` held (polled every 0.1 s); TimeoutError past ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError
        time.sleep(0.1)
    return time.monotonic() - start


@pytest.mark.slow
def test_health_reports_a_receiver_pool_with_no_process_left(
    two_queues: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's parent holds the listening socket, so a TCP connect succeeds even when every
    receiver process is gone and no association is answered. The receiver's heartbeat is
    withheld while no process lives: health turns degraded within the staleness, and ok again
    once the supervisor has started a process."""
    monkeypatch.setattr(receiver_pool, "RESTART_BACKOFF_S", 0.5)
    settings = two_queues.settings.model_copy(update={"receiver_processes": 2})
    pool = start_receiver_pool(settings)
    name = f"hostA:1:{pool.port}"
    beat = Heartbeat(two_queues.db, Registration(name, registry.RECEIVER, ()), HEARTBEAT_S,
                     serving=lambda: pool.answering).start()  # fmt: skip
    try:
        problems, receivers = _receiver_problems(two_queues)
        assert problems == [] and [(r["name"], r["live"]) for r in receivers] == [(name, True)]
        # the jobs page lists workers only (a receiver consumes no queue), and no warning
        page = two_queues.login("radiologist1").get("/jobs").text
        assert f'data-worker="{name}"' not in page and "receiver-warning" not in page
        start = pool._start
        assert start is not None
        failing = [True]

        def start_unless_failing(index: int) -> object:
            if failing[0]:
                raise OSError(24, "Too many open files")
            return start(index)

        pool._start = start_unless_failing  # type: ignore[assignment]
        for process in list(pool.processes):
            assert process.pid is not None
            os.kill(process.pid, signal.SIGKILL)
        stale_s = _until(lambda: bool(_receiver_problems(two_queues)[0]), 30)
        problems, receivers = _receiver_problems(two_queues)
        assert problems and problems[0].startswith("no DICOM receiver is answering (last seen ")
        assert name in problems[0] and receivers[0]["live"] is False
        assert two_queues.client().get("/api/health").json()["status"] == "degraded"
        assert stale_s < HEARTBEAT_S * (STALE_AFTER_BEATS + 1) + 3
        print(f"no receiver answering: flagged {stale_s:.1f} s after both processes were killed")
        page = two_queues.login("admin1").get("/jobs").text  # the console says so too
        assert re.search(r'class="flash warning receiver-warning">no DICOM receiver is answering',
                         html.unescape(page))  # fmt: skip
        with socket.create_connection(("127.0.0.1", pool.port), timeout=2):
            pass  # the port still accepts: what the TCP probe ("listener") sees
        refused = run_dcmtk("echoscu", "-to", "3", "-ta", "3", "-aec", "PACSNODE", "127.0.0.1",
                            str(pool.port), timeout=30)  # fmt: skip
        assert refused.returncode != 0  # and nobody answers an association
        failing[0] = False
        cleared_s = _until(lambda: not _receiver_problems(two_queues)[0], 30)
        print(f"cleared {cleared_s:.1f} s after restarts were allowed again")
        assert pool.alive() == 2 and _receiver_problems(two_queues)[1][0]["live"] is True
        # the append service outlived its receivers: the new ones append through it again
        assert pool.appender is not None and pool.appender.is_alive()
        assert "receiver-warning" not in two_queues.login("admin1").get("/jobs").text
    finally:
        beat.stop()
        pool.stop(timeout=10)
    # a clean stop removes the row: no problem is left behind
    assert _receiver_problems(two_queues) == ([], [])
