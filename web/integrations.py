"""The console's calls into the other stages (dispatch, jobs, grouping, models, results, ingest).

Plain, typed imports: every stage below is part of the node, so a missing one is an import error
at start-up, never a page that quietly says "not available". The functions the console calls as
they are re-exported here; the ones below compose a stage call with what the console adds
(its session's overrides, the upload's source name, a result folder's files).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.orm import Session

from core.config import DestinationSettings, Settings
from models.card import ModelCard, refused_card_name, scan_cards
from node.db.engine import Database
from node.db.repositories.config_overrides import effective_settings
from node.db.repositories.studies import study_facts
from node.dispatch.delivery_plan import release_held, resend, send_results
from node.dispatch.rejection import preview_rejection
from node.dispatch.rejection import reject_job as reject_results
from node.dispatch.sender import PingResult
from node.dispatch.targets import sender_for
from node.grouping import routing
from node.grouping.completion import force_complete
from node.ingest import importer
from node.jobs.queue import cancel_job, requeue_job, rerun_with_pipeline
from node.overrides import (
    PIPELINE_OVERRIDE_PREFIX,
    OverrideValues,
    stored_pipeline_overrides,
    with_overrides,
)
from node.results import exports
from node.results.exports import CSV_COLUMNS, csv_lines, finding_rows, stream_zip
from node.results.locations import finding_slice_mask, outline
from node.results.maps import anomaly_display_values
from node.results.store import (
    load_anomaly_map,
    load_explanation_maps,
    load_heatmap,
    load_result,
)
from node.study_files import StoredInstance, StudyBusy, remove_study, stored_instances
from pipelines.checks import pipeline_problems
from pipelines.contract import PipelineResult
from pipelines.spec import PipelineConfig, apply_overrides, load_pipeline_configs

__all__ = [
    "CSV_COLUMNS",
    "PIPELINE_OVERRIDE_PREFIX",
    "StoredInstance",
    "StudyBusy",
    "anomaly_display_values",
    "cancel_job",
    "csv_lines",
    "effective_settings",
    "explain_routes",
    "finding_rows",
    "finding_slice_mask",
    "force_complete",
    "import_paths",
    "load_anomaly_map",
    "load_explanation_maps",
    "load_heatmap",
    "load_result",
    "model_cards",
    "outline",
    "ping_destination",
    "pipeline_classes",
    "pipeline_configs",
    "pipeline_problems",
    "preview_rejection",
    "refused_model_cards",
    "reject_results",
    "release_held",
    "remove_study",
    "requeue_job",
    "rerun_with_pipeline",
    "resend",
    "route_destinations",
    "send_results",
    "result_export",
    "stored_instances",
    "stream_zip",
    "validate_pipeline_override",
]

# -- review and dispatch ----------------------------------------------------------------------


def ping_destination(dest: DestinationSettings, timeout_s: float) -> PingResult:
    return sender_for(dest, timeout_s=timeout_s).ping()


# -- grouping ---------------------------------------------------------------------------------


def explain_routes(settings: Settings, session: Session, study_uid: str) -> str:
    """The routing dry-run for a received study, with the console's destinations, rules and
    pipeline switches as the scheduler sees them; KeyError when the node has no such study,
    ConfigError when the pipeline definitions cannot be read."""
    facts = study_facts(session, study_uid)
    if facts is None:
        raise KeyError(study_uid)
    configs = pipeline_configs(settings, session)
    current = effective_settings(session, settings)
    return routing.explain_routes(current, configs, facts).explain()


def route_destinations(settings: Settings, session: Session, study_uid: str) -> tuple[str, ...]:
    """Where the routing rules would send a study's results (``/api/predict`` with
    ``deliver=true``): the same decision the scheduler takes, destinations only."""
    facts = study_facts(session, study_uid)
    if facts is None:
        raise KeyError(study_uid)
    configs = pipeline_configs(settings, session)
    current = effective_settings(session, settings)
    return routing.explain_routes(current, configs, facts).destinations


# -- models and pipelines ---------------------------------------------------------------------


def model_cards(settings: Settings) -> dict[str, ModelCard]:
    """The node's valid model cards by name (a broken card is skipped: the worker warned about it
    once at start-up, the health and ``pacsnode models list`` show it)."""
    return scan_cards(settings.models_dir, warn=False)[0]


def refused_model_cards(settings: Settings) -> dict[str, str]:
    """Card files the node refused, by the name they go by, with the reason (not logged again:
    the worker warned once at start-up)."""
    _cards, errors = scan_cards(settings.models_dir, warn=False)
    return {refused_card_name(path): message for path, message in errors.items()}


def pipeline_configs(
    settings: Settings, session: Session | None = None
) -> dict[str, PipelineConfig]:
    """Pipeline definitions, with the console's overrides applied when a session is given;
    ConfigError (naming file and key) when a definition cannot be read."""
    configs = load_pipeline_configs(settings.pipelines_dir)
    if session is None:
        return configs
    return with_overrides(configs, stored_pipeline_overrides(session))


def validate_pipeline_override(cfg: PipelineConfig, overrides: OverrideValues) -> None:
    """Raise ConfigError when the override would not apply (unknown key, bad value)."""
    apply_overrides(cfg, overrides)


def pipeline_classes(cfg: PipelineConfig, cards: Mapping[str, ModelCard]) -> dict[str, list[str]]:
    """Class names per task of a pipeline, read from its members' model cards."""
    classes: dict[str, list[str]] = {}
    tasks = cfg.tasks
    for task_name, task in (
        ("segmentation", tasks.segmentation),
        ("classification", tasks.classification),
        ("detection", tasks.detection),
    ):
        if task is None:
            continue
        for member in task.members:
            card = cards.get(member.model)
            if card is not None:
                classes[task_name] = list(card.class_names)
                break
    return classes


# -- results and ingest -----------------------------------------------------------------------


def result_export(name: str, result_dir: Path) -> bytes | str:
    """``findings_csv``/``masks_zip``/``pdfs_zip``/``result_json`` of the result kept in
    ``result_dir`` (the worker's ``result.json`` + arrays, and the DICOM files beside them)."""
    if name == "pdfs_zip":
        pdfs = sorted(result_dir.glob("pdf*.dcm"))
        if not pdfs:
            raise FileNotFoundError(result_dir / "pdf.dcm")
        return exports.pdfs_zip(pdfs)
    result: PipelineResult = load_result(result_dir)
    if name == "masks_zip":
        seg = result_dir / "seg.dcm"
        return exports.masks_zip(result, seg if seg.is_file() else None)
    if name == "findings_csv":
        return exports.findings_csv(result)
    if name == "result_json":
        return exports.result_json(result)
    raise KeyError(name)


def import_paths(
    db: Database,
    settings: Settings,
    paths: list[Path],
    actor: str = "system",
    source: str = "upload",
) -> importer.ImportReport:
    """Files uploaded in the console (or sent to ``/api/predict``: source ``predict``/``api``),
    persisted like any received instance."""
    return importer.import_paths(db, settings, paths, source=source, actor=actor)
