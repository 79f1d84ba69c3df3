"""Where a job's results live and how the console reads and exports them.

The worker writes each job's outputs under ``results_dir/job-<job id>/`` (a database key: no path
is built from a UID a peer sent). Every
export is built by ``node.results.exports`` from those files (one implementation); a result whose
files are gone is a ``FileNotFoundError`` the route answers with 404, never a second, different file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.config import Settings
from node.db.orm import Artifact, Job
from web.integrations import load_result, result_export

EXPORTS = {
    "csv": ("findings_csv", "text/csv", "findings.csv"),
    "masks": ("masks_zip", "application/zip", "masks.zip"),
    "pdfs": ("pdfs_zip", "application/zip", "reports.zip"),
    "json": ("result_json", "application/json", "result.json"),
}


def result_dir(settings: Settings, job: Job) -> Path:
    return settings.job_results_dir(job.id)


def data_file(settings: Settings, relative: str) -> Path:
    """A file named by a database row (relative to the data directory), refusing any path that
    would escape it: a row an older node wrote must not make the console read outside."""
    base = settings.data_dir.resolve()
    path = (base / relative).resolve()
    if base not in path.parents:
        raise FileNotFoundError(relative)
    return path


def artifact_file(settings: Settings, artifact: Artifact) -> Path:
    """The artifact's file, refusing paths that would escape the data directory."""
    return data_file(settings, artifact.path)


def review_data(settings: Settings, job: Job) -> dict[str, Any]:
    """The result as JSON (no arrays); the job's summary when it has no result on disk (a failed
    or cancelled job, or results removed by retention)."""
    try:
        data: dict[str, Any] = load_result(result_dir(settings, job)).to_json_dict()
    except FileNotFoundError:
        return {"summary_only": True, **(job.summary or {})}
    return data


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def export(settings: Settings, job: Job, which: str) -> tuple[bytes, str, str]:
    """(content, media type, file name) of one export; KeyError for an unknown export name,
    FileNotFoundError when the job's result files are not on disk."""
    func_name, media_type, filename = EXPORTS[which]
    return _as_bytes(result_export(func_name, result_dir(settings, job))), media_type, filename
