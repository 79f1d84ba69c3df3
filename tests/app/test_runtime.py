"""Entry points as processes: SIGTERM stops the listener but lets a running association finish;
``pacsnode serve`` starts every stage (its receiver keeps a heartbeat health reads, removed on a
clean stop); bad configuration exits 2 naming the key."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from node.db.engine import Database
from node.db.orm import WorkerProcess
from node.db.repositories.workers import RECEIVER
from tests.conftest import free_port
from tests.processes import PROJECT_ROOT, NodeProcess, node_env, wait_for_port

pytestmark = pytest.mark.integration


def test_sigterm_lets_the_running_association_finish(tmp_path: Path) -> None:
    port = free_port()
    env = node_env(
        tmp_path / "data", f"sqlite:///{tmp_path / 'data' / 'db.sqlite'}", port, free_port()
    )
    proc = NodeProcess(["receiver"], env, tmp_path, "receiver").start()
    try:
        wait_for_port(port, proc=proc)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE")
        assert assoc.is_established
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        assert assoc.send_c_store(ds).Status == 0x0000
        proc.proc.send_signal(15)  # type: ignore[union-attr]
        time.sleep(1.0)
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".2"
        assert assoc.send_c_store(ds).Status == 0x0000, "running association was cut off"
        assoc.release()
        assert proc.proc.wait(timeout=30) == 0  # type: ignore[union-attr]
        refused = ae.associate("127.0.0.1", port, ae_title="PACSNODE")
        assert not refused.is_established
        stored = list((tmp_path / "data" / "spool").rglob("*.dcm"))
        assert len(stored) == 2
    finally:
        proc.kill()


@pytest.mark.slow
def test_serve_runs_every_stage_and_stops_on_sigterm(tmp_path: Path) -> None:
    port, web = free_port(), free_port()
    url = f"sqlite:///{tmp_path / 'data' / 'db.sqlite'}"
    beat_s = 0.5  # stale after 3 beats: 1.5 s
    env = node_env(tmp_path / "data", url, port, web, {"PACSNODE_JOBS__HEARTBEAT_S": str(beat_s)})
    proc = NodeProcess(["serve"], env, tmp_path, "serve").start()
    try:
        wait_for_port(port, proc=proc)
        wait_for_port(web, proc=proc)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE")
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        time.sleep(beat_s * 3 + 1)  # past the staleness: only a beating receiver is live now
        # no broker anywhere: the embedded worker and dispatcher serve every queue in use
        health = httpx.get(f"http://127.0.0.1:{web}/api/health", timeout=10).json()
        assert health["status"] == "ok", health
        assert {q["name"] for q in health["queues"]} == {"cpu"}
        assert [(r["name"].rsplit(":", 1)[1], r["live"]) for r in health["receivers"]] == [
            (str(port), True)
        ]
        assert proc.terminate(timeout=60) == 0, proc.output()[-3000:]
        database = Database(url)
        try:  # a clean stop is not a receiver gone silent: its row is removed
            with database.read() as session:
                rows = session.query(WorkerProcess).filter_by(engine=RECEIVER).count()
            assert rows == 0
        finally:
            database.dispose()
        assert "celery" not in proc.output().lower()
    finally:
        proc.kill()


def test_bad_setting_exits_2_naming_the_key(tmp_path: Path) -> None:
    env = node_env(
        tmp_path, "sqlite://", free_port(), free_port(), {"PACSNODE_MAX_ASSOCIATIONS": "0"}
    )
    run = subprocess.run(
        [sys.executable, "-m", "app", "receiver"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "PACSNODE_MAX_ASSOCIATIONS" in run.stderr
