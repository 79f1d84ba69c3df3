"""docker-compose.yml: parsed by the real Compose tool, and consistent with the code it runs.

There is no container engine on CI, so the stack itself cannot start; what can be checked is that
Compose accepts the file, that every pacsnode service runs an entry point the CLI really has (the
same entry points ``tests/node/test_multiprocess.py`` runs as processes), that only the DICOM and
web ports are published, and that PostgreSQL is reachable only on the internal network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {
    "POSTGRES_PASSWORD": "pw-for-config-check",
    "PACSNODE_SECRET_KEY": "k" * 40,
    "PACSNODE_HOOK_SECRET": "h" * 40,
    "RABBITMQ_PASSWORD": "r" * 24,
}
PACSNODE_SERVICES = {
    "migrate",
    "receiver",
    "worker",
    "worker-gpu",
    "dispatcher",
    "scheduler",
    "web",
}


def _compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    pytest.skip("neither docker-compose nor the docker compose plugin is installed")


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [*_compose_command(), "--profile", "gpu", "config"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    run = _config(SECRETS)
    assert run.returncode == 0, run.stderr
    parsed: dict[str, Any] = yaml.safe_load(run.stdout)
    return parsed


def test_every_pacsnode_service_runs_a_real_entry_point(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert set(services) >= PACSNODE_SERVICES
    parser = build_parser()
    for name in PACSNODE_SERVICES:
        command = services[name]["command"]
        args = parser.parse_args(command)  # SystemExit (a failure) for an unknown command
        assert args.command in {"db", "receiver", "worker", "dispatcher", "scheduler", "web"}, name


def test_only_dicom_and_web_ports_are_published(stack: dict[str, Any]) -> None:
    published = set()
    for service in stack["services"].values():
        for port in service.get("ports", []):
            published.add(
                int(port["published"]) if isinstance(port, dict) else int(str(port).split(":")[0])
            )
    assert published == {11112, 8000, 4242, 8042}


def test_database_sits_on_the_internal_network_only(stack: dict[str, Any]) -> None:
    db = stack["services"]["db"]
    assert set(db["networks"]) == {"backend"} and "ports" not in db
    assert stack["networks"]["backend"].get("internal") is True
    assert "backend" not in stack["services"]["orthanc"]["networks"]


def test_gpu_worker_reserves_a_gpu(stack: dict[str, Any]) -> None:
    devices = stack["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_jobs_go_through_rabbitmq_on_the_internal_network(stack: dict[str, Any]) -> None:
    """Workers are Celery workers that any number of replicas can run (no fixed name), and the
    broker, like the database, is reachable only on the internal network."""
    services = stack["services"]
    broker = services["rabbitmq"]
    assert set(broker["networks"]) == {"backend"} and "ports" not in broker
    parser = build_parser()
    for name in ("worker", "worker-gpu"):
        args = parser.parse_args(services[name]["command"])
        assert args.engine == "celery" and args.worker_id is None and args.node_name is None
        assert "container_name" not in services[name]
        env = services[name]["environment"]
        assert env["PACSNODE_JOBS__ENGINE"] == "celery"
        assert env["PACSNODE_JOBS__BROKER_URL"].startswith("amqp://pacsnode:")
    assert parser.parse_args(services["worker-gpu"]["command"]).queues == "gpu"


def test_missing_secret_is_refused_with_its_name() -> None:
    run = _config({k: v for k, v in SECRETS.items() if k != "PACSNODE_SECRET_KEY"})
    assert run.returncode != 0
    assert "PACSNODE_SECRET_KEY" in run.stderr
