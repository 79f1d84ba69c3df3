"""Scaling out: studies per minute with 1, 2, 3 workers, Celery engine against the local engine.

Each configuration is a fresh node (PostgreSQL schema, data directory) run as separate processes —
receiver, scheduler, dispatcher and N workers — with the CPU-bound demo-2d pipeline (CR phantoms,
one thread per worker) and a folder destination. The Celery engine runs on a private RabbitMQ this
script starts (its own port and data directory), or on ``--broker-url``.

- warm-up: studies are sent until every worker has run one (a worker loads its models on its
  first job; that cold start is not what is measured);
- throughput: a burst of ``--studies`` studies by C-STORE over 4 associations at once, with a
  quiet period (5 s) longer than the push, so the burst's jobs are created together rather than
  at the pace studies arrive; studies per minute from the first job of the burst created to the
  last one finished;
- latency (1 worker, no backlog): ``--latency-runs`` studies sent one at a time, each after the
  previous one was delivered; median and 95th percentile of study completed -> job started (the
  engine's hand-over) and of study completed -> last result delivered.

    .venv/bin/python bench/scale.py                       # 1, 2, 3 workers, both engines
    .venv/bin/python bench/scale.py --workers 1 2 --studies 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.db.orm import Artifact, AuditEvent, Delivery, Job, Study  # noqa: E402
from tests.cluster import Cluster, cstore  # noqa: E402
from tests.conftest import postgres_schema_url  # noqa: E402
from tests.node.test_multiprocess import write_cr_studies  # noqa: E402
from tests.processes import wait_for_port  # noqa: E402
from tests.rabbitmq import PrivateRabbitMQ  # noqa: E402


@dataclass(frozen=True)
class Result:
    engine: str
    workers: int
    studies_per_min: float
    job_s: float  # median duration of a burst job (pipeline + results), as the worker measured
    handover_ms: tuple[float, float] | None = None  # median, p95 (latency runs only)
    delivery_ms: tuple[float, float] | None = None


def _pct(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def _wait_delivered(cluster: Cluster, studies: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with cluster.db.read() as s:
            processed = s.scalar(select(func.count(Study.id)).where(Study.state == "processed"))
            open_deliveries = s.scalar(
                select(func.count(Delivery.id)).where(Delivery.state != "delivered")
            )
        if processed == studies and open_deliveries == 0:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{studies} studies not processed and delivered after {timeout} s")


def _latencies(cluster: Cluster, since: datetime) -> tuple[list[float], list[float]]:
    """Per study completed after ``since``: completed -> job started, completed -> delivered."""
    handover, delivered = [], []
    with cluster.db.read() as s:
        rows = s.execute(
            select(Study.completed_at, Job.started_at, func.max(Delivery.delivered_at))
            .join(Job, Job.study_pk == Study.id)
            .join(Artifact, Artifact.job_pk == Job.id)
            .join(Delivery, Delivery.artifact_pk == Artifact.id)
            .where(Study.completed_at > since)
            .group_by(Study.id, Study.completed_at, Job.started_at)
        ).all()
    for completed, started, last_delivery in rows:
        handover.append((started - completed).total_seconds() * 1000)
        delivered.append((last_delivery - completed).total_seconds() * 1000)
    return handover, delivered


def _warm_up(cluster: Cluster, workers: int, out: Path) -> int:
    """Send studies until every worker finished one; return how many were sent."""
    sent = 0
    while sent < 6 * workers:
        batch = write_cr_studies(out / f"warm{sent}", workers)
        for folder in batch:
            cstore(cluster.port, folder)
        sent += len(batch)
        _wait_delivered(cluster, sent, timeout=600)
        with cluster.db.read() as s:
            actors = set(
                s.scalars(select(AuditEvent.actor).where(AuditEvent.action == "job.succeeded"))
            )
        if len({a.split("@")[0] for a in actors}) == workers:
            return sent
    raise RuntimeError(f"not every worker took a job after {sent} warm-up studies")


def run_config(
    engine: str, workers: int, folders: list[Path], latency: list[Path], broker_url: str
) -> Result:
    schema = postgres_schema_url()
    pg_url = next(schema)
    tmp = Path(tempfile.mkdtemp(prefix=f"scale-{engine}-{workers}-"))
    cluster = Cluster(
        tmp,
        pg_url,
        engine=engine,
        broker_url=broker_url,
        extra={"PACSNODE_COMPLETION__QUIET_PERIOD_S": "5"},
    )
    try:
        receiver = cluster.start("receiver", "receiver")
        cluster.start("scheduler", "scheduler")
        cluster.start("dispatcher", "dispatcher")
        names = [f"w{i + 1}" for i in range(workers)]
        for i, name in enumerate(names):
            cluster.worker(f"{name}@host{chr(65 + i)}")
        wait_for_port(cluster.port, proc=receiver)
        for name in names:
            cluster.wait_ready(name)
        warm = _warm_up(cluster, workers, tmp / "warm")
        with cluster.db.read() as s:
            before = s.scalar(select(func.max(Job.id))) or 0
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda folder: cstore(cluster.port, folder), folders))
        _wait_delivered(cluster, warm + len(folders), timeout=900)
        with cluster.db.read() as s:
            first, last = s.execute(
                select(func.min(Job.created_at), func.max(Job.finished_at)).where(Job.id > before)
            ).one()
            job_s = statistics.median(s.scalars(select(Job.duration_s).where(Job.id > before)))
        per_min = len(folders) / (last - first).total_seconds() * 60
        if not latency:
            return Result(engine, workers, per_min, job_s)
        since = last
        for i, folder in enumerate(latency, start=1):
            cstore(cluster.port, folder)
            _wait_delivered(cluster, warm + len(folders) + i, timeout=300)
        handover, delivered = _latencies(cluster, since)
        return Result(engine, workers, per_min, job_s, _pct(handover), _pct(delivered))
    finally:
        cluster.stop(show=False)
        schema.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--studies", type=int, default=24, help="studies in the burst")
    parser.add_argument("--latency-runs", type=int, default=10, help="one-at-a-time studies")
    parser.add_argument("--broker-url", help="use this broker instead of a private RabbitMQ")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="scale-"))
    folders = write_cr_studies(work / "burst", args.studies)
    latency = write_cr_studies(work / "latency", args.latency_runs)
    # other patient IDs and UIDs than the burst's: write_cr_studies seeds its own RNG
    broker = None if args.broker_url else PrivateRabbitMQ(work / "rabbitmq").start()
    broker_url = args.broker_url or (broker.url if broker else "")
    results: list[Result] = []
    try:
        for workers in args.workers:
            for engine in ("local", "celery"):
                lat = latency if workers == min(args.workers) else []
                result = run_config(engine, workers, folders, lat, broker_url)
                results.append(result)
                print(
                    f"{engine} x{workers}: {result.studies_per_min:.1f} studies/min,"
                    f" job {result.job_s:.2f} s",
                    flush=True,
                )
    finally:
        if broker is not None:
            broker.close()
    print(
        "\n| engine | workers | studies/min | job (median) | completed→job started (median / p95) |"
        " completed→delivered (median / p95) |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        hand = f"{r.handover_ms[0]:.0f} / {r.handover_ms[1]:.0f} ms" if r.handover_ms else ""
        deliv = f"{r.delivery_ms[0]:.0f} / {r.delivery_ms[1]:.0f} ms" if r.delivery_ms else ""
        print(
            f"| {r.engine} | {r.workers} | {r.studies_per_min:.1f} | {r.job_s:.2f} s"
            f" | {hand} | {deliv} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
