"""kill -9 the receiver mid-transfer: every acknowledged instance survives, byte for byte.

The receiver runs as the real entry point (``python -m app receiver``) in its own process.
Four associations send 500 small instances; the process is killed once some have been
acknowledged, restarted, and the database and spool are checked. Then everything is resent:
re-sending is idempotent (duplicates are acknowledged, counts stay right).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pynetdicom import _config
from sqlalchemy import func, select

from node.db.engine import Database
from node.db.orm import Instance, Study
from node.jobs.creation import JobPlanner
from tests.conftest import PROJECT_ROOT, free_port
from tests.node.ingest.helpers import acknowledged_problems, run_dcmtk, write_instances
from tests.node.ingest.test_receiver_pool import send_files

pytestmark = pytest.mark.slow
COUNT, STUDIES, ASSOCIATIONS = 500, 5, 4


def _start_receiver(data_dir: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """The receiver as deployed; its log goes to ``log_path`` (a failure shows it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSNODE_")}
    env.update({
        "PACSNODE_ENVIRONMENT": "test", "PACSNODE_DATA_DIR": str(data_dir),
        "PACSNODE_DICOM_HOST": "127.0.0.1", "PACSNODE_DICOM_PORT": str(port),
        "PACSNODE_MIN_FREE_DISK_MB": "0", "PACSNODE_LOG_LEVEL": "WARNING",
    })  # fmt: skip
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "app", "receiver"], cwd=PROJECT_ROOT,
                                env=env, stdout=log_file, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (
            run_dcmtk("echoscu", "-aec", "PACSNODE", "127.0.0.1", str(port), timeout=10).returncode
            == 0
        ):
            return proc
        assert proc.poll() is None, "receiver exited during start-up"
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("receiver did not start")


def _tail(log_path: Path, lines: int = 60) -> str:
    """The end of the receiver's log, for a failure message."""
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def _send_all(
    port: int, files: dict[str, Path], acknowledged: dict[str, Path]
) -> list[threading.Thread]:
    sops = {path: sop for sop, path in files.items()}
    paths = list(files.values())
    lock = threading.Lock()
    threads = [threading.Thread(target=send_files, daemon=True, kwargs={"dimse_timeout": 10},
                                args=(port, paths[i::ASSOCIATIONS], acknowledged, lock, sops))
               for i in range(ASSOCIATIONS)]  # fmt: skip
    for thread in threads:
        thread.start()
    return threads


def test_kill_9_loses_no_acknowledged_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    data_dir, port = tmp_path / "data", free_port()
    data_dir.mkdir()
    files = write_instances(tmp_path / "send", COUNT, STUDIES)
    log_path = tmp_path / "receiver.log"
    receiver = _start_receiver(data_dir, port, log_path)
    acknowledged: dict[str, Path] = {}
    threads = _send_all(port, files, acknowledged)
    deadline = time.monotonic() + 120
    while len(acknowledged) < COUNT // 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(receiver.pid, signal.SIGKILL)  # mid-transfer, no chance to clean up
    receiver.wait(10)
    for thread in threads:
        thread.join(60)
    killed_at = len(acknowledged)
    assert 0 < killed_at < COUNT, f"kill landed outside the transfer ({killed_at} acknowledged)"

    url = f"sqlite:///{data_dir / 'pacsnode.db'}"
    receiver = _start_receiver(data_dir, port, log_path)  # recovery: on what the kill left
    try:
        assert acknowledged_problems(url, data_dir, acknowledged) == []
        # the sender retries everything: duplicates are acknowledged, nothing is counted twice
        resent: dict[str, Path] = {}
        for thread in _send_all(port, files, resent):
            thread.join(300)
        assert len(resent) == COUNT, _tail(log_path)
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(60)
    assert acknowledged_problems(url, data_dir, resent) == []
    db = Database(url)
    try:
        with db.read() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == COUNT
            counts = session.scalars(select(Study.instance_count)).all()
            assert sorted(counts) == [COUNT // STUDIES] * STUDIES
    finally:
        db.dispose()
    _each_study_gets_exactly_one_job(data_dir)
    leftovers = [p for p in (data_dir / "spool").rglob("*.part")]
    print(f"acknowledged before kill: {killed_at}; temp files left by the kill: {len(leftovers)}")


def _each_study_gets_exactly_one_job(data_dir: Path) -> None:
    """The jobs half: the studies the killed receiver left complete into one job per pipeline,
    and a second sweep (a restarted scheduler) plans nothing twice."""
    from datetime import timedelta

    from core.config import load_settings
    from node.db.orm import Job, utcnow
    from node.scheduler import completion_sweep
    from pipelines.spec import load_pipeline_configs

    routed = [{"name": "all-ct", "when": {"modality": ["CT"]}, "pipelines": ["demo-3d"],
               "destinations": []}]  # fmt: skip
    settings = load_settings(None, environment="test", data_dir=data_dir, min_free_disk_mb=0,
                             routing=routed)  # fmt: skip
    db = Database(settings.effective_database_url)
    try:
        planner = JobPlanner(settings, load_pipeline_configs(settings.pipelines_dir))
        later = utcnow() + timedelta(seconds=settings.completion.quiet_period_s + 1)
        assert len(completion_sweep(settings, db, planner, later)) == STUDIES
        assert completion_sweep(settings, db, planner, later + timedelta(seconds=5)) == []
        with db.read() as session:
            per_study = session.execute(
                select(Job.study_pk, func.count()).group_by(Job.study_pk)
            ).all()
        assert len(per_study) == STUDIES and all(n == 1 for _, n in per_study), per_study
    finally:
        db.dispose()
