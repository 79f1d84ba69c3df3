"""The console's calls into the other stages (dispatch, jobs, grouping, models, results, ingest).

Each call is imported lazily and degrades to :class:`Unavailable` when the stage is not installed
or not configured, so a page shows "not available" instead of failing. Only ``ImportError`` and
the stages' own configuration errors are treated that way; real failures propagate.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.config import ConfigError, DestinationSettings, Settings
from node.db.orm import Job
from node.overrides import PIPELINE_OVERRIDE_PREFIX

log = logging.getLogger("pacsnode.web.integrations")


class Unavailable(RuntimeError):
    """The stage behind a console feature is not installed or not configured on this node."""


def _function(module: str, name: str) -> Callable[..., Any]:
    try:
        func: Callable[..., Any] = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"{module}.{name} is not available on this node: {exc}") from exc
    return func


# -- review and dispatch ----------------------------------------------------------------------


def release_held(session: Session, job: Job, actor: str) -> Any:
    return _function("node.dispatch.planning", "release_held")(session, job, actor)


def reject_results(session: Session, settings: Settings, job: Job, actor: str, reason: str) -> Any:
    """Cancel the job's unsent deliveries and plan IOCM rejection notes for what was delivered."""
    return _function("node.dispatch.rejection", "reject_job")(session, settings, job, actor, reason)


def preview_rejection(session: Session, job: Job) -> Any:
    return _function("node.dispatch.rejection", "preview_rejection")(session, job)


def resend(session: Session, delivery_id: int, actor: str) -> Any:
    return _function("node.dispatch.planning", "resend")(session, delivery_id, actor)


def ping_destination(dest: DestinationSettings, timeout_s: float) -> Any:
    sender_for = _function("node.dispatch.targets", "sender_for")
    return sender_for(dest, timeout_s=timeout_s).ping()


# -- jobs and grouping ------------------------------------------------------------------------


def requeue_job(session: Session, job_id: int, actor: str) -> bool:
    return bool(_function("node.jobs.queue", "requeue_job")(session, job_id, actor))


def force_complete(session: Session, study_uid: str, reason: str, now: datetime) -> bool:
    return bool(
        _function("node.grouping.completion", "force_complete")(session, study_uid, reason, now)
    )


def explain_routes(settings: Settings, session: Session, study_uid: str) -> str:
    facts = _function("node.db.repositories.studies", "study_facts")(session, study_uid)
    if facts is None:
        raise KeyError(study_uid)
    configs = pipeline_configs(settings, session)
    decision = _function("node.grouping.routing", "explain_routes")(settings, configs, facts)
    return str(decision.explain())


# -- models and pipelines ---------------------------------------------------------------------


def model_cards(settings: Settings) -> dict[str, Any]:
    try:
        cards: dict[str, Any] = _function("models.card", "load_cards")(settings.models_dir)
    except (ConfigError, OSError, ValueError) as exc:
        raise Unavailable(f"model cards cannot be read: {exc}") from exc
    return cards


def pipeline_configs(settings: Settings, session: Session | None = None) -> dict[str, Any]:
    """Pipeline definitions with the console's overrides applied (when a session is given)."""
    try:
        configs: dict[str, Any] = _function("pipelines.spec", "load_pipeline_configs")(
            settings.pipelines_dir
        )
    except (ConfigError, OSError) as exc:
        raise Unavailable(f"pipeline definitions cannot be read: {exc}") from exc
    if session is None:
        return configs
    from node.db.repositories import console

    apply = _function("pipelines.spec", "apply_overrides")
    for key, value in console.list_overrides(session, PIPELINE_OVERRIDE_PREFIX).items():
        name = key.removeprefix(PIPELINE_OVERRIDE_PREFIX)
        if name in configs:
            try:
                configs[name] = apply(configs[name], value)
            except ConfigError as exc:
                log.warning("ignoring stale override %s: %s", key, exc)
    return configs


def validate_pipeline_override(cfg: Any, overrides: dict[str, Any]) -> None:
    """Raise ConfigError when the override would not apply (unknown key, bad value)."""
    _function("pipelines.spec", "apply_overrides")(cfg, overrides)


def pipeline_classes(cfg: Any, cards: dict[str, Any]) -> dict[str, list[str]]:
    """Class names per task of a pipeline, read from its members' model cards."""
    classes: dict[str, list[str]] = {}
    tasks = getattr(cfg, "tasks", None)
    for task_name in ("segmentation", "classification", "detection"):
        task = getattr(tasks, task_name, None)
        if task is None:
            continue
        for member in task.members:
            card = cards.get(member.model)
            if card is not None:
                classes[task_name] = list(card.class_names)
                break
    return classes


# -- results and ingest -----------------------------------------------------------------------


def result_export(name: str, result_dir: Path) -> Any:
    """``findings_csv``/``masks_zip``/``pdfs_zip``/``result_json`` of the result kept in
    ``result_dir`` (the worker's ``result.json`` + arrays, and the DICOM files beside them)."""
    from node.results import exports

    if name == "pdfs_zip":
        pdfs = sorted(result_dir.glob("pdf*.dcm"))
        if not pdfs:
            raise FileNotFoundError(result_dir / "pdf.dcm")
        return exports.pdfs_zip(pdfs)
    result = load_result(result_dir)
    if name == "masks_zip":
        seg = result_dir / "seg.dcm"
        return exports.masks_zip(result, seg if seg.is_file() else None)
    if name in ("findings_csv", "result_json"):
        return getattr(exports, name)(result)
    raise KeyError(name)


def load_result(result_dir: Path) -> Any:
    from node.results.store import load_result as load

    return load(result_dir)


def import_paths(db: Any, settings: Settings, paths: list[Path]) -> Any:
    return _function("node.ingest.importer", "import_paths")(db, settings, paths, source="upload")
