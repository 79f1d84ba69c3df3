"""Where a job's results live and how the console reads and exports them.

The worker writes each job's outputs under ``results_dir/<study>/<pipeline>/v<version>/``. Exports
come from ``node.results.exports`` when installed; otherwise the console builds the same files from
the artifacts and the job summary itself, so downloads work on a partly installed node.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

from core.config import Settings
from node.db.orm import Artifact, Job
from web.integrations import Unavailable, load_result, result_export

log = logging.getLogger("pacsnode.web.result_views")
EXPORTS = {
    "csv": ("findings_csv", "text/csv", "findings.csv"),
    "masks": ("masks_zip", "application/zip", "masks.zip"),
    "pdfs": ("pdfs_zip", "application/zip", "reports.zip"),
    "json": ("result_json", "application/json", "result.json"),
}


def result_dir(settings: Settings, job: Job) -> Path:
    return (
        settings.results_dir
        / job.study.study_instance_uid
        / job.pipeline_name
        / f"v{job.result_version}"
    )


def artifact_file(settings: Settings, artifact: Artifact) -> Path:
    """The artifact's file, refusing paths that would escape the data directory."""
    base = settings.data_dir.resolve()
    path = (base / artifact.path).resolve()
    if base not in path.parents:
        raise FileNotFoundError(artifact.path)
    return path


def review_data(settings: Settings, job: Job) -> dict[str, Any]:
    """The result as JSON (no arrays): from the results stage, a ``result.json``, or the summary."""
    folder = result_dir(settings, job)
    try:
        result = load_result(folder)
        data: dict[str, Any] = (
            result.to_json_dict() if hasattr(result, "to_json_dict") else dict(result)
        )
        return data
    except (Unavailable, FileNotFoundError, ValueError, KeyError, OSError):
        pass
    path = folder / "result.json"
    if path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                return loaded
        except (OSError, ValueError):
            pass
    return {"summary_only": True, **(job.summary or {})}


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, Path):
        return value.read_bytes()
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, indent=2).encode("utf-8")


def export(settings: Settings, job: Job, which: str) -> tuple[bytes, str, str]:
    """(content, media type, file name) of one export; KeyError for an unknown export name."""
    func_name, media_type, filename = EXPORTS[which]
    try:
        return _as_bytes(result_export(func_name, result_dir(settings, job))), media_type, filename
    except (Unavailable, FileNotFoundError):
        pass
    except TypeError:  # the results stage's exports take other arguments than documented
        log.warning(
            "node.results.exports.%s has an unexpected signature; using the console's own export",
            func_name,
            exc_info=True,
        )
    if which == "json":
        return json.dumps(review_data(settings, job), indent=2).encode(), media_type, filename
    if which == "csv":
        return _findings_csv(review_data(settings, job)), media_type, filename
    kinds = {"masks": {"seg"}, "pdfs": {"pdf"}}[which]
    return (
        _zip_artifacts(settings, [a for a in job.artifacts if a.kind in kinds]),
        media_type,
        filename,
    )


def _findings_csv(data: dict[str, Any]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["tracking_id", "label", "severity", "area_mm2", "volume_mm3", "mean_intensity", "score"]
    )
    for finding in data.get("findings") or []:
        m = finding.get("measurements") or {}
        box = finding.get("box") or {}
        writer.writerow(
            [
                finding.get("tracking_id", ""),
                (finding.get("label") or {}).get("name", ""),
                finding.get("severity", ""),
                m.get("area_mm2", ""),
                m.get("volume_mm3", ""),
                m.get("mean_intensity", ""),
                box.get("score", ""),
            ]
        )
    return out.getvalue().encode("utf-8")


def _zip_artifacts(settings: Settings, artifacts: list[Artifact]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for artifact in artifacts:
            try:
                path = artifact_file(settings, artifact)
            except FileNotFoundError:
                continue
            if path.is_file():
                archive.write(path, f"{artifact.kind}_{artifact.sop_instance_uid}.dcm")
    return buffer.getvalue()
