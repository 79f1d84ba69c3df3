"""Where a job's results live and how the console reads and exports them.

The worker writes each job's outputs under ``results_dir/job-<job id>/`` (a database key: no path
is built from a UID a peer sent). Every
export is built by ``node.results.exports`` from those files (one implementation); a result whose
files are gone is a ``FileNotFoundError`` the route answers with 404, never a second, different file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Settings
from node.db.orm import Artifact, Job
from web.integrations import (
    CSV_COLUMNS,
    csv_lines,
    finding_rows,
    load_result,
    result_export,
    stream_zip,
)

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


# -- bulk exports (many jobs, streamed) --------------------------------------------------------

BULK_EXPORTS = {
    "csv": ("text/csv", "findings.csv"),
    "pdfs": ("application/zip", "reports.zip"),
}
BULK_CSV_COLUMNS = (
    "job_id",
    "study_instance_uid",
    "pipeline",
    "patient_id",
    "accession_number",
    *CSV_COLUMNS,
)


@dataclass(frozen=True)
class BulkJob:
    """What a streamed export needs of one job, read before the response starts (the database
    session is closed by the time the stream runs)."""

    job_id: int
    study_uid: str
    pipeline: str
    patient_id: str
    accession: str

    @classmethod
    def of(cls, job: Job) -> BulkJob:
        study = job.study
        return cls(
            job.id, study.study_instance_uid, job.pipeline_name, study.patient_id,
            study.accession_number,
        )  # fmt: skip


def bulk_csv(settings: Settings, jobs: Sequence[BulkJob]) -> Iterator[str]:
    """Every job's findings in one CSV, each row led by its job and study; a job whose result
    files are gone (retention) contributes no rows."""
    yield from csv_lines(BULK_CSV_COLUMNS, _bulk_rows(settings, jobs))


def _bulk_rows(settings: Settings, jobs: Sequence[BulkJob]) -> Iterator[list[object]]:
    for job in jobs:
        try:
            result = load_result(settings.job_results_dir(job.job_id))
        except FileNotFoundError:
            continue
        lead: list[object] = [
            job.job_id,
            job.study_uid,
            job.pipeline,
            job.patient_id,
            job.accession,
        ]
        for row in finding_rows(result):
            yield lead + row


def bulk_pdfs(
    settings: Settings, jobs: Sequence[BulkJob], skipped: Sequence[str]
) -> Iterator[bytes]:
    """Every job's PDF reports in one zip (``job<id>/<file>``), with ``SKIPPED.txt`` naming the
    jobs of the selection that have no results."""

    def members() -> Iterator[tuple[str, Path | bytes]]:
        for job in jobs:
            for pdf in sorted(settings.job_results_dir(job.job_id).glob("pdf*.dcm")):
                yield f"job{job.job_id}/{pdf.name}", pdf
        if skipped:
            yield "SKIPPED.txt", ("\n".join(skipped) + "\n").encode("utf-8")

    return stream_zip(members())
