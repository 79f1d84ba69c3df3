"""A node spread over processes as on several hosts: shared by the distributed test and
``bench/scale.py``. Each stage is a ``python -m app`` process (tests/processes.py) on one
PostgreSQL schema and one data directory; workers are Celery workers named ``wN@hostX`` or,
with the local engine, leased-row-queue workers."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts

from core.config import PROJECT_ROOT
from node.db.engine import Database
from tests.conftest import free_port
from tests.processes import NodeProcess, node_env


def cstore(port: int, folder: Path) -> None:
    """Send every file of ``folder`` in one association (pynetdicom, like a modality)."""
    ae = AE(ae_title="MODALITY")
    ae.requested_contexts = StoragePresentationContexts[:127]
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE")
    if not assoc.is_established:
        raise RuntimeError("association refused")
    try:
        for path in sorted(folder.rglob("*.dcm")):
            status = assoc.send_c_store(dcmread(path))
            if not status or status.Status != 0x0000:
                raise RuntimeError(f"C-STORE of {path.name}: {status}")
    finally:
        assoc.release()


def pipelines_dir(tmp: Path, queue: str) -> Path:
    """The demo-2d pipeline (CPU-bound on CR phantoms) routed to ``queue``."""
    folder = tmp / f"pipelines-{queue}"
    folder.mkdir(parents=True, exist_ok=True)
    text = (PROJECT_ROOT / "pipelines" / "definitions" / "demo-2d.yaml").read_text()
    (folder / "demo-2d.yaml").write_text(
        text.replace("enabled: true", f"enabled: true\nqueue: {queue}", 1)
    )
    return folder


class Cluster:
    """Start, watch and stop the processes of one node installation."""

    def __init__(
        self,
        tmp: Path,
        pg_url: str,
        *,
        engine: str = "celery",
        broker_url: str = "",
        queue: str = "cpu",
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.engine = engine
        self.port = free_port()
        self.out = tmp / "delivered"
        env = {
            "PACSNODE_JOBS__ENGINE": engine,
            "PACSNODE_JOBS__LEASE_S": "6",
            "PACSNODE_JOBS__REPUBLISH_AFTER_S": "3",
            "PACSNODE_JOBS__BACKOFF_BASE_S": "1",
            "PACSNODE_JOBS__POLL_INTERVAL_S": "0.5",
            "PACSNODE_COMPLETION__QUIET_PERIOD_S": "1",
            "PACSNODE_COMPLETION__SWEEP_INTERVAL_S": "0.5",
            "PACSNODE_DISPATCH__POLL_INTERVAL_S": "0.2",
            "PACSNODE_TORCH_THREADS": "1",
            "PACSNODE_PIPELINES_DIR": str(pipelines_dir(tmp, queue)),
            "PACSNODE_DESTINATIONS": json.dumps(
                [{"name": "out", "kind": "folder", "path": str(self.out)}]
            ),
        }
        if broker_url:
            env["PACSNODE_JOBS__BROKER_URL"] = broker_url
        env.update(extra or {})
        self.env = node_env(tmp / "data", pg_url, self.port, free_port(), env)
        self.db = Database(pg_url)
        self.db.migrate()  # like docker-compose's one-shot migrate service
        self.procs: dict[str, NodeProcess] = {}

    def start(self, name: str, *args: str) -> NodeProcess:
        proc = NodeProcess(list(args), self.env, self.tmp / "logs", name).start()
        self.procs[name] = proc
        return proc

    def worker(self, node: str, queues: str = "cpu") -> NodeProcess:
        """A worker host: ``node`` is ``wN@hostX`` (its process is named ``wN``)."""
        name = node.split("@")[0]
        if self.engine == "celery":
            return self.start(name, "worker", "--engine", "celery", "--queues", queues, "-n", node)
        return self.start(
            name, "worker", "--engine", "local", "--queues", queues, "--worker-id", node
        )

    def wait_ready(self, name: str, timeout: float = 180) -> None:
        """Until a worker takes work (Celery says "ready."; a local worker "started")."""
        self.wait_log(name, "ready." if self.engine == "celery" else "started", timeout)

    def wait_log(self, name: str, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.procs[name].output():
                return
            if not self.procs[name].alive():
                break
            time.sleep(0.2)
        raise TimeoutError(f"{name} never logged {text!r}:\n{self.procs[name].output()[-3000:]}")

    def stop(self, show: bool = True) -> None:
        codes = {name: proc.terminate() for name, proc in self.procs.items()}
        self.db.dispose()
        if show:
            for name, proc in self.procs.items():
                print(f"--- {name} (exit {codes[name]}) ---\n{proc.output()[-3000:]}")
