"""Deliveries through Celery (``jobs.engine: celery``) on PostgreSQL and a private RabbitMQ:
the leader scheduler publishes due deliveries per destination on queue ``deliveries``, two
``pacsnode dispatcher --engine celery`` consumers (named for two hosts) claim them under the
dispatcher's lease. A DICOM peer that is down at first is retried with the dispatcher's own
backoff (published as the next message's ETA), and duplicate messages published by hand for both
destinations send nothing twice: the real storescp (unique file names, so a second copy would be
a second file) and the folder each hold every object exactly once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.config import Settings, load_settings
from core.domain import ArtifactKind
from node.db.engine import Database
from node.db.orm import Artifact, AuditEvent, Delivery, Job, utcnow
from node.db.repositories import workers as registry
from node.dispatch.delivery_plan import plan_deliveries
from node.jobs.celery_engine import CeleryPublisher, make_celery
from tests import rabbitmq
from tests.conftest import free_port, postgres_schema_url
from tests.node.dispatch.conftest import add_job_with_artifacts, start_storescp
from tests.node.dispatch.factory import MadeObject
from tests.processes import NodeProcess, node_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rabbitmq.PrivateRabbitMQ]:
    yield from rabbitmq.serve_private(tmp_path_factory.mktemp("rabbitmq"))


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_schema_url()


def _wait(what: str, check: Callable[[], bool], timeout: float, procs: list[NodeProcess]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    logs = "\n".join(f"--- {p.name} ---\n{p.output()[-2500:]}" for p in procs)
    raise TimeoutError(f"{what} not reached in {timeout} s\n{logs}")


def _rows(db: Database, destination: str) -> list[tuple[int, str, str, int]]:
    """(delivery id, artifact kind, state, attempts) of one destination's deliveries."""
    with db.read() as s:
        return [
            (d_id, kind, state, attempts)
            for d_id, kind, state, attempts in s.execute(
                select(Delivery.id, Artifact.kind, Delivery.state, Delivery.attempts)
                .join(Artifact, Artifact.id == Delivery.artifact_pk)
                .where(Delivery.destination_name == destination)
            )
        ]


def _states(db: Database, destination: str) -> set[str]:
    return {state for _, _, state, _ in _rows(db, destination)}


def test_deliveries_run_through_celery_once_each_despite_duplicates_and_a_peer_down(
    broker: rabbitmq.PrivateRabbitMQ,
    pg_url: str,
    settings: Settings,
    tmp_path: Path,
    results: dict[ArtifactKind, MadeObject],
) -> None:
    scp_port, scp_dir, out_dir = free_port(), tmp_path / "pacs", tmp_path / "out"
    destinations = [
        {
            "name": "pacs",
            "kind": "dicom",
            "ae_title": "STORESCP",
            "host": "127.0.0.1",
            "port": scp_port,
        },
        {"name": "out", "kind": "folder", "path": str(out_dir)},
    ]
    env = node_env(
        tmp_path / "data",
        pg_url,
        free_port(),
        free_port(),
        {
            "PACSNODE_JOBS__ENGINE": "celery",
            "PACSNODE_JOBS__BROKER_URL": broker.url,
            "PACSNODE_JOBS__REPUBLISH_AFTER_S": "3",
            "PACSNODE_JOBS__HEARTBEAT_S": "0.5",
            "PACSNODE_DISPATCH__BACKOFF_BASE_S": "1",
            "PACSNODE_DISPATCH__JITTER": "0",
            "PACSNODE_DISPATCH__TIMEOUT_S": "3",
            "PACSNODE_DISPATCH__POLL_INTERVAL_S": "0.2",
            "PACSNODE_DESTINATIONS": json.dumps(destinations),
        },
    )
    db = Database(pg_url)
    db.migrate()
    job_id = add_job_with_artifacts(db, settings, results)
    with db.write() as session:
        plan_deliveries(session, session.get_one(Job, job_id), ["pacs", "out"], held=False)
    procs: list[NodeProcess] = []
    scp = None
    try:
        for name, args in (
            ("d1", ["dispatcher", "--engine", "celery", "-n", "d1@hostA"]),
            ("d2", ["dispatcher", "--engine", "celery", "-n", "d2@hostB"]),
            ("scheduler", ["scheduler"]),
        ):
            procs.append(NodeProcess(args, env, tmp_path / "logs", name).start())

        # the folder gets everything; the PACS is down: its deliveries back off and retry
        _wait(
            "folder delivered",
            lambda: _states(db, "out") == {"delivered"},
            180,
            procs,
        )
        _wait(
            "pacs retried",
            # the SR is held back while its SEG fails (that uses no attempt of its own)
            lambda: all(a >= 2 for _, kind, _, a in _rows(db, "pacs") if kind != "sr"),
            60,
            procs,
        )
        with db.read() as s:
            live = registry.workers(s, utcnow(), 5.0)
        consumers = {w.name: w for w in live if w.live}
        assert {"d1@hostA", "d2@hostB"} <= set(consumers)
        assert consumers["d1@hostA"].queues == ("deliveries",)
        assert consumers["d1@hostA"].devices == ()  # a delivery consumer loads no models

        # duplicates for both destinations, then the PACS comes up
        publisher = CeleryPublisher(make_celery(load_settings(None, **_celery(broker.url))))
        for _ in range(3):
            publisher.publish_destination("out", "deliveries", None)
        scp = start_storescp(scp_dir, scp_port, "+uf")
        for _ in range(3):
            publisher.publish_destination("pacs", "deliveries", None)
        _wait(
            "pacs delivered",
            lambda: _states(db, "pacs") == {"delivered"},
            90,
            procs,
        )
        for _ in range(3):  # and more duplicates after everything was delivered
            publisher.publish_destination("pacs", "deliveries", None)
        time.sleep(4)  # let the duplicates drain (each finds nothing due)

        stored = [p for p in scp_dir.rglob("*") if p.is_file()]
        assert len(stored) == len(results), sorted(p.name for p in stored)
        assert len(list(out_dir.rglob("*.dcm"))) == len(results)
        rows = _rows(db, "pacs")
        with db.read() as s:
            claims = dict(
                s.execute(
                    select(AuditEvent.entity_id, func.count(AuditEvent.id))
                    .where(AuditEvent.action == "delivery.claimed")
                    .group_by(AuditEvent.entity_id)
                ).all()
            )
            actors = set(
                s.scalars(select(AuditEvent.actor).where(AuditEvent.action == "delivery.delivered"))
            )
        # one claim per attempt: no send happened outside the dispatcher's retry schedule
        attempts = {kind: n for _, kind, _, n in rows}
        assert all(claims[str(d)] == n >= 2 for d, kind, _, n in rows if kind != "sr"), (
            rows,
            claims,
        )
        assert {a.split(":")[0] for a in actors} <= {"d1@hostA", "d2@hostB"}
        print(f"pacs attempts per object until stored: {attempts}")
    finally:
        for proc in procs:
            proc.terminate()
        if scp is not None:
            scp.terminate()
            scp.wait(timeout=10)
        db.dispose()


def _celery(url: str) -> dict[str, object]:
    return {"jobs": {"engine": "celery", "broker_url": url}}
