"""Broken models and pipelines at start-up: one warning each, the worker still starts with the good
ones, and each model's load status (not loaded yet / loaded / failed, with the error) reaches
``/api/health`` and ``pacsnode models list`` through the database, as from another process."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from app.commands.models import list_command
from app.worker import build_worker
from core.config import Settings
from models.registry import ModelRegistry
from node.db.engine import Database
from tests.models.helpers import make_card, tiny_unet_weights
from tests.web.conftest import make_console

PIPELINE = """
name: {name}
version: "1.0"
selection:
  dims: 2
  rules:
    - modality: [CR]
tasks:
  segmentation:
    members:
      - {{model: {model}, weight: 1.0, device: cpu}}
"""


@pytest.fixture
def node_settings(settings: Settings, tmp_path: Path) -> Settings:
    models = tmp_path / "models"
    make_card(models, "good-seg", tiny_unet_weights(models / "good-seg" / "model.pt"))
    make_card(
        models, "bad-sha", tiny_unet_weights(models / "bad-sha" / "model.pt"), sha256="ab" * 32
    )
    gone = make_card(models, "no-weights", tiny_unet_weights(models / "no-weights" / "model.pt"))
    gone.weights_path.unlink()
    bundle = models / "spleen-bundle" / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "inference.json").write_text("{}")
    tiny_unet_weights(bundle / "models" / "model.pt")
    make_card(models, "spleen-bundle", bundle)  # weights: a folder, SHA-256: its folder digest
    (models / "broken.yaml").write_text("name: broken\nframework: keras\n")
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "good.yaml").write_text(PIPELINE.format(name="good-pipe", model="good-seg"))
    (pipelines / "ghost.yaml").write_text(PIPELINE.format(name="ghost-pipe", model="ghost-model"))
    return settings.model_copy(update={"models_dir": models, "pipelines_dir": pipelines})


def warnings_naming(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and name in r.getMessage()
    ]


def test_startup_warns_once_per_broken_card_and_pipeline_and_health_shows_status(
    node_settings: Settings, sqlite_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    worker = build_worker(node_settings, sqlite_db, worker_id="w-test")  # the node starts
    for broken in ("bad-sha", "no-weights", "broken.yaml", "ghost-pipe"):
        found = warnings_naming(caplog, broken)
        assert len(found) == 1, (broken, found)
    assert "SHA-256 mismatch" in warnings_naming(caplog, "bad-sha")[0]
    assert "not found" in warnings_naming(caplog, "no-weights")[0]
    assert "ghost-model" in warnings_naming(caplog, "ghost-pipe")[0]
    for good in ("good-seg", "spleen-bundle", "good-pipe"):
        assert not warnings_naming(caplog, good)

    console = make_console(node_settings, sqlite_db)
    models = {m["name"]: m for m in console.client().get("/api/health").json()["models"]}
    assert models["good-seg"]["load_status"] == "not loaded yet"
    assert models["bad-sha"]["load_status"] == "failed"
    assert "SHA-256 mismatch" in models["bad-sha"]["error"]
    assert models["bad-sha"]["status_worker"] == "w-test"
    assert models["no-weights"]["load_status"] == "failed"
    assert models["no-weights"]["weights_present"] is False
    assert "not found" in models["no-weights"]["error"]
    assert models["broken"]["load_status"] == "failed" and "framework" in models["broken"]["error"]
    assert models["spleen-bundle"]["weights_present"] is True  # a bundle folder has weights
    assert models["spleen-bundle"]["load_status"] == "not loaded yet"

    registry = worker.pipelines.models  # type: ignore[attr-defined]
    assert isinstance(registry, ModelRegistry)
    registry.get("good-seg", "cpu")  # the first job that needs it
    body = console.client().get("/api/health").json()
    models = {m["name"]: m for m in body["models"]}
    assert models["good-seg"]["load_status"] == "loaded"
    assert body["models_available"] is True
    assert set(body["pipeline_problems"]) == {"ghost-pipe"}
    assert "ghost-model" in body["pipeline_problems"]["ghost-pipe"]
    assert len(warnings_naming(caplog, "broken.yaml")) == 1  # health calls do not warn again


def test_a_load_that_fails_is_recorded_with_its_error(
    node_settings: Settings, sqlite_db: Database
) -> None:
    worker = build_worker(node_settings, sqlite_db, worker_id="w-test")
    registry = worker.pipelines.models  # type: ignore[attr-defined]
    weights = node_settings.models_dir / "good-seg" / "model.pt"
    weights.write_bytes(b"changed after start-up")
    with pytest.raises(Exception, match="SHA-256 mismatch"):
        registry.get("good-seg", "cpu")
    console = make_console(node_settings, sqlite_db)
    models = {m["name"]: m for m in console.client().get("/api/health").json()["models"]}
    assert models["good-seg"]["load_status"] == "failed"
    assert "SHA-256 mismatch" in models["good-seg"]["error"]


def test_models_list_prints_load_status_and_last_error(
    node_settings: Settings, sqlite_db: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = build_worker(node_settings, sqlite_db, worker_id="w-test")
    worker.pipelines.models.get("good-seg", "cpu")  # type: ignore[attr-defined]
    capsys.readouterr()
    assert list_command(node_settings, argparse.Namespace()) == 0
    lines = capsys.readouterr().out.splitlines()

    def line(name: str) -> str:
        return next(x for x in lines if x.startswith(name + " "))

    assert line("good-seg").endswith("loaded on cpu")
    assert line("spleen-bundle").endswith("not loaded yet")
    assert "SHA-256 MISMATCH" in line("bad-sha") and line("bad-sha").endswith("failed")
    assert line("no-weights").endswith("failed")
    errors = [x.strip() for x in lines if x.strip().startswith("last error:")]
    assert any("not found" in e for e in errors)
    assert any("card says" in e for e in errors)
