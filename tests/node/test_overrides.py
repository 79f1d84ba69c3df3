"""Console edits reach the running stages: pipelines, destinations and the AE allowlist."""

from __future__ import annotations

from functools import partial

from core.config import Settings, load_settings
from models.registry import ModelRegistry
from node.db.engine import Database
from node.db.repositories import config_overrides
from node.dispatch.delivery_plan import plan_deliveries
from node.dispatch.dispatcher import Dispatcher
from node.jobs.worker import Worker
from node.overrides import PIPELINE_OVERRIDE_PREFIX, Refreshing, effective_pipeline_configs
from node.results.produce import produce_results
from pipelines.registry import PipelineRegistry
from pipelines.spec import load_pipeline_configs


def _store(db: Database, key: str, value: dict) -> None:
    with db.write() as session:
        config_overrides.set_override(session, key, value, "admin")


def test_disabled_pipeline_and_threshold_apply_and_stale_edits_are_skipped(
    settings: Settings, db: Database
) -> None:
    base = load_pipeline_configs(settings.pipelines_dir)
    _store(db, PIPELINE_OVERRIDE_PREFIX + "demo-3d", {"enabled": False})
    _store(db, PIPELINE_OVERRIDE_PREFIX + "demo-2d", {"tasks.classification.threshold": 0.7})
    _store(db, PIPELINE_OVERRIDE_PREFIX + "gone", {"enabled": False})  # unknown pipeline: ignored
    configs = effective_pipeline_configs(base, db)
    assert configs["demo-3d"].enabled is False and base["demo-3d"].enabled is True
    assert configs["demo-2d"].tasks.classification.threshold == 0.7
    _store(db, PIPELINE_OVERRIDE_PREFIX + "demo-2d", {"tasks.classification.no_such_key": 1})
    assert (
        effective_pipeline_configs(base, db)["demo-2d"] == base["demo-2d"]
    )  # stale: logged, skipped


def test_worker_runs_with_the_devices_and_weights_set_in_the_console(
    settings: Settings, db: Database
) -> None:
    registry = PipelineRegistry(
        settings, ModelRegistry(settings.models_dir, settings.torch_threads)
    )
    worker = Worker(
        settings, db, registry, produce_results, partial(plan_deliveries, settings=settings)
    )
    edit = {
        "tasks": {"segmentation": {"members": {"demo-seg-unet": {"device": "cpu", "weight": 0.9}}}}
    }
    _store(db, PIPELINE_OVERRIDE_PREFIX + "demo-2d", edit)
    worker._apply_console_overrides("demo-2d")
    members = {m.model: m for m in registry.configs()["demo-2d"].tasks.segmentation.members}
    assert members["demo-seg-unet"].device == "cpu" and members["demo-seg-unet"].weight == 0.9
    with db.write() as session:  # the admin resets the pipeline: the YAML definition is back
        config_overrides.delete_override(session, PIPELINE_OVERRIDE_PREFIX + "demo-2d")
    worker._apply_console_overrides("demo-2d")
    members = {m.model: m for m in registry.configs()["demo-2d"].tasks.segmentation.members}
    assert members["demo-seg-unet"].device == "auto"


def test_dispatcher_sees_a_destination_disabled_in_the_console(tmp_path, db: Database) -> None:
    settings = load_settings(None, environment="test", data_dir=tmp_path, destinations=[
        {"name": "archive", "kind": "folder", "path": str(tmp_path / "out")}])  # fmt: skip
    dispatcher = Dispatcher(settings, db)
    assert dispatcher.settings.destinations[0].enabled
    _store(db, config_overrides.DESTINATION_OVERRIDE_PREFIX + "archive", {"enabled": False})
    dispatcher._settings._at = -float("inf")  # skip the refresh interval instead of sleeping
    assert not dispatcher.settings.destinations[0].enabled


def test_refreshing_keeps_the_last_good_value_when_the_database_fails() -> None:
    calls = iter([1, RuntimeError("database down")])

    def compute() -> int:
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    current = Refreshing(compute, interval_s=0)
    assert current.get() == 1 and current.get() == 1


def test_scheduler_routes_with_rules_destinations_and_review_gate_set_in_the_console(
    settings: Settings, db: Database, tmp_path
) -> None:
    """The scheduler built from the file (no routing, no destinations) creates the job the
    console's edits describe: its rule, its destination, its review gate."""
    from datetime import timedelta

    from sqlalchemy import select

    from node.db.orm import Job, utcnow
    from node.scheduler import build_scheduler
    from tests.node.jobs.rows import add_study

    base = load_pipeline_configs(settings.pipelines_dir)
    ct = "demo-3d"
    scheduler = build_scheduler(settings, db, base, clock=lambda: utcnow() + timedelta(hours=1))
    sweep = scheduler.get_job("completion_sweep")
    assert sweep is not None
    _store(db, config_overrides.DESTINATION_OVERRIDE_PREFIX + "pacs2",
           {"definition": {"kind": "folder", "path": str(tmp_path / "pacs2")}})  # fmt: skip
    _store(db, config_overrides.ROUTING_OVERRIDE_KEY, {"rules": [
        {"name": "ct", "when": {"modality": ["CT"]}, "pipelines": [ct], "destinations": ["pacs2"]}
    ]})  # fmt: skip
    _store(db, PIPELINE_OVERRIDE_PREFIX + ct, {"review_required": True})
    add_study(db, "1.2.3", modality="CT")
    sweep.func()
    with db.read() as session:
        job = session.scalars(select(Job)).one()
        assert (job.pipeline_name, job.destinations, job.review_state) == (ct, ["pacs2"], "pending")


def test_effective_settings_merge_file_and_console_rows(tmp_path) -> None:
    from core.config import DestinationSettings, RoutingRule

    yaml_dests = [
        DestinationSettings(name="a", kind="folder", path=tmp_path / "a"),
        DestinationSettings(name="b", kind="folder", path=tmp_path / "b"),
        DestinationSettings(name="c", kind="folder", path=tmp_path / "c"),
    ]
    rows = {
        "destination:a": {"enabled": False},
        "destination:b": {"deleted": True},
        "destination:c": {"definition": {"kind": "dicom", "ae_title": "C", "host": "h", "port": 1}},
        "destination:new": {"definition": {"kind": "folder", "path": str(tmp_path / "n")}},
        "destination:stale": {"definition": {"kind": "dicom"}},  # no longer valid: skipped
    }
    merged = config_overrides.effective_destinations(yaml_dests, rows)
    assert [(d.name, d.kind.value, d.enabled) for d in merged] == [
        ("a", "folder", False), ("c", "dicom", True), ("new", "folder", True)
    ]  # fmt: skip
    yaml_rules = [RoutingRule(name="file", destinations=["a"])]
    assert config_overrides.effective_routing(yaml_rules, {}, {"a"}) == yaml_rules
    console = {"routing": {"rules": [{"name": "r", "destinations": ["b", "new"]}]}}
    rules = config_overrides.effective_routing(yaml_rules, console, {d.name for d in merged})
    assert [(r.name, r.destinations) for r in rules] == [("r", ["new"])]  # b was deleted
