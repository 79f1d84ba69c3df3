"""Multi-process mode on PostgreSQL: receiver, two workers, dispatcher and scheduler as separate
processes (the docker-compose entry points). A batch of studies is processed with no job run twice
and none lost; killing a worker mid-job leaves the job to the other worker."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from node.db.engine import Database
from node.db.orm import AuditEvent, Delivery, Job, Study
from tests.conftest import free_port, postgres_schema_url
from tests.processes import NodeProcess, node_env, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_schema_url()


def write_cr_studies(out: Path, count: int) -> list[Path]:
    from models.training.dicom_export import write_series
    from models.training.phantoms import make_2d_phantom

    rng = np.random.default_rng(7)
    folders = []
    for i in range(count):
        folder = out / f"study{i}"
        write_series(make_2d_phantom(rng), folder, modality="CR", patient_id=f"MP{i:03d}")
        folders.append(folder)
    return folders


def write_ct_study(out: Path, slices: int = 48) -> Path:
    from models.training.dicom_export import write_series
    from models.training.phantoms import make_3d_phantom

    folder = out / "ct"
    write_series(make_3d_phantom(np.random.default_rng(3), shape=(slices, 128, 128)), folder)
    return folder


def storescu(port: int, folder: Path) -> None:
    subprocess.run(
        [
            "storescu",
            "-aec",
            "PACSNODE",
            "-aet",
            "MODALITY",
            "+sd",
            "+r",
            "127.0.0.1",
            str(port),
            str(folder),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def wait_all_jobs_terminal(db: Database, studies: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.read() as s:
            processed = s.scalar(select(func.count(Study.id)).where(Study.state == "processed"))
        if processed == studies:
            return
        time.sleep(1)
    with db.read() as s:
        states = s.execute(select(Job.id, Job.state, Job.error)).all()
    raise TimeoutError(f"not all studies processed after {timeout} s; jobs: {states}")


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[dict[str, object]]:
    dicom_port = free_port()
    out_dir = tmp_path / "delivered"
    env = node_env(
        tmp_path / "data",
        pg_url,
        dicom_port,
        free_port(),
        {
            "PACSNODE_COMPLETION__QUIET_PERIOD_S": "1",
            "PACSNODE_COMPLETION__SWEEP_INTERVAL_S": "0.5",
            "PACSNODE_JOBS__LEASE_S": "6",
            "PACSNODE_JOBS__POLL_INTERVAL_S": "0.2",
            "PACSNODE_DISPATCH__POLL_INTERVAL_S": "0.2",
            "PACSNODE_TORCH_THREADS": "1",
            "PACSNODE_DESTINATIONS": json.dumps(
                [{"name": "out", "kind": "folder", "path": str(out_dir)}]
            ),
        },
    )
    logs = tmp_path / "logs"
    db = Database(pg_url)
    db.migrate()  # like docker-compose's one-shot migrate service
    procs = {
        "receiver": NodeProcess(["receiver"], env, logs, "receiver"),
        "worker-a": NodeProcess(["worker", "--worker-id", "worker-a"], env, logs, "worker-a"),
        "worker-b": NodeProcess(["worker", "--worker-id", "worker-b"], env, logs, "worker-b"),
        "dispatcher": NodeProcess(["dispatcher"], env, logs, "dispatcher"),
        "scheduler": NodeProcess(["scheduler"], env, logs, "scheduler"),
    }
    for proc in procs.values():
        proc.start()
    try:
        wait_for_port(dicom_port, proc=procs["receiver"])
        yield {"db": db, "port": dicom_port, "procs": procs, "out": out_dir, "tmp": tmp_path}
    finally:
        codes = {name: proc.terminate() for name, proc in procs.items()}
        db.dispose()
        for name, proc in procs.items():
            print(f"--- {name} (exit {codes[name]}) ---\n{proc.output()[-3000:]}")


def test_batch_processed_once_each_by_two_workers(cluster: dict[str, object]) -> None:
    db: Database = cluster["db"]  # type: ignore[assignment]
    tmp: Path = cluster["tmp"]  # type: ignore[assignment]
    folders = write_cr_studies(tmp / "send", 6)
    for folder in folders:
        storescu(cluster["port"], folder)  # type: ignore[arg-type]
    wait_all_jobs_terminal(db, 6, timeout=240)
    with db.read() as s:
        jobs = s.scalars(select(Job)).all()
        assert len(jobs) == 6 and {j.state for j in jobs} == {"succeeded"}, [j.error for j in jobs]
        claims = s.execute(
            select(AuditEvent.entity_id, func.count(AuditEvent.id))
            .where(AuditEvent.action == "job.claimed")
            .group_by(AuditEvent.entity_id)
        ).all()
        assert all(n == 1 for _, n in claims), f"a job was claimed twice: {claims}"
        workers = set(
            s.scalars(select(AuditEvent.actor).where(AuditEvent.action == "job.succeeded"))
        )
        assert workers == {"worker-a", "worker-b"}, f"only {workers} did work"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with db.read() as s:
            pending = s.scalar(select(func.count(Delivery.id)).where(Delivery.state != "delivered"))
        if pending == 0:
            break
        time.sleep(0.5)
    assert pending == 0
    delivered = list(Path(cluster["out"]).rglob("*.dcm"))  # type: ignore[arg-type]
    with db.read() as s:
        assert len(delivered) == s.scalar(select(func.count(Delivery.id)))


def test_killed_worker_job_finishes_on_the_other(cluster: dict[str, object]) -> None:
    db: Database = cluster["db"]  # type: ignore[assignment]
    procs: dict[str, NodeProcess] = cluster["procs"]  # type: ignore[assignment]
    storescu(cluster["port"], write_ct_study(cluster["tmp"] / "send"))  # type: ignore[arg-type,operator]
    deadline = time.monotonic() + 120
    owner = ""
    while time.monotonic() < deadline and not owner:
        with db.read() as s:
            owner = s.scalar(select(Job.lease_owner).where(Job.state == "running")) or ""
        time.sleep(0.05)
    assert owner in ("worker-a", "worker-b"), "no job started running"
    procs[owner].kill()
    survivor = "worker-b" if owner == "worker-a" else "worker-a"
    wait_all_jobs_terminal(db, 1, timeout=300)
    with db.read() as s:
        job = s.scalars(select(Job)).one()
        assert job.state == "succeeded", job.error
        finisher = s.scalar(select(AuditEvent.actor).where(AuditEvent.action == "job.succeeded"))
        assert finisher == survivor
        assert (
            s.scalar(select(func.count(AuditEvent.id)).where(AuditEvent.action == "job.claimed"))
            == 2
        )
