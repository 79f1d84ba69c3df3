"""The wiring: the worker is assembled from the real stages, and only the processes that run it
(``pacsnode worker`` and ``serve``, through ``app.worker``) pay for PyTorch and numba."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import app.worker as worker_module
from app.runtime import Node
from app.worker import build_worker
from core.config import Settings
from models.registry import ModelRegistry
from node.db.engine import Database
from node.results.produce import produce_results
from pipelines import component_numbers, label_statistics
from pipelines.registry import PipelineRegistry
from tests.conftest import free_port
from tests.processes import PROJECT_ROOT, node_env

# Starts the receiver, dispatcher and scheduler stages for real, stops them, loads the web
# console's command and the Celery consumer (``pacsnode dispatcher --engine celery``), then
# reports which heavy libraries the process loaded.
_START_STOP = """
import sys
import app.celery_worker
import app.console
from app.runtime import Node
from core.config import load_settings
node = Node(load_settings(None), ("receiver", "dispatcher", "scheduler"))
node.start()
node.stop(grace_s=5)
print(sorted(m for m in ("torch", "monai", "timm", "ultralytics", "numba") if m in sys.modules))
"""


def test_receiver_dispatcher_scheduler_and_web_start_without_pytorch(tmp_path: Path) -> None:
    env = node_env(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", free_port(), free_port())
    run = subprocess.run(
        [sys.executable, "-c", _START_STOP],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout


def test_worker_gets_the_pipelines_with_the_model_registry_and_the_real_producer(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept: list[int] = []  # the thresholds are process-wide: recorded here, applied in
    monkeypatch.setattr(worker_module, "keep_freed_memory", kept.append)  # test_allocator
    label_statistics.warm_up.cache_clear()
    component_numbers.warm_up.cache_clear()
    worker = build_worker(settings, db, "w-wiring")
    # the numba kernels are loaded before the first study, not during it
    assert label_statistics.warm_up.cache_info().currsize == 1
    assert component_numbers.warm_up.cache_info().currsize == 1
    assert kept == [settings.worker_malloc_keep_mb]  # malloc keeps freed memory for reuse
    assert isinstance(worker.pipelines, PipelineRegistry)
    assert isinstance(worker.pipelines.models, ModelRegistry)
    assert worker.pipelines.models.models_dir == settings.models_dir
    assert worker._producer is produce_results
    assert worker.worker_id == "w-wiring"
    with pytest.raises(ValueError, match="build_worker"):
        Node(settings, ("worker",), db=db)
