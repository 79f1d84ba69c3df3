"""Where a job's results live and how the console reads and exports them.

The worker writes each job's outputs under ``results_dir/job-<job id>/`` (a database key: no path
is built from a UID a peer sent). Every
export is built by ``node.results.exports`` from those files (one implementation); a result whose
files are gone is a ``FileNotFoundError`` the route answers with 404, never a second, different file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Settings
from core.units import readable_unit
from node.db.orm import Artifact, Job
from pipelines.contract import Finding, PipelineResult
from web.integrations import (
    CSV_COLUMNS,
    anomaly_display_values,
    csv_lines,
    finding_rows,
    finding_slice_mask,
    load_anomaly_map,
    load_explanation_maps,
    load_heatmap,
    load_result,
    outline,
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


def _stamp(path: Path) -> int:
    """The file's mtime in ns: a cache key that changes when a re-run rewrites the result."""
    return path.stat().st_mtime_ns


@lru_cache(maxsize=2)  # the result being reviewed (and the one before): label maps are big
def _result_cached(directory: str, stamp: int) -> tuple[PipelineResult, dict[str, Any]]:
    result = load_result(Path(directory))
    if result.segmentation is not None:  # the float maps stay on disk: the heat map is uint8
        result = replace(result, segmentation=replace(result.segmentation, probabilities=None))
    return result, result.to_json_dict()


def review_result(settings: Settings, job: Job) -> tuple[PipelineResult, dict[str, Any]] | None:
    """The job's result and its JSON form, read once per version of the files (the review page
    and each of its frame images ask for it); None when it is not on disk. Treat as read-only."""
    directory = result_dir(settings, job)
    try:
        return _result_cached(str(directory), _stamp(directory / "result.json"))
    except FileNotFoundError:
        return None


def review_data(settings: Settings, job: Job) -> dict[str, Any]:
    """The result as JSON (no arrays); the job's summary when it has no result on disk (a failed
    or cancelled job, or results removed by retention)."""
    loaded = review_result(settings, job)
    if loaded is None:
        return {"summary_only": True, **(job.summary or {})}
    return loaded[1]


@lru_cache(maxsize=4)
def _heatmap_cached(directory: str, stamp: int) -> np.ndarray | None:
    return load_heatmap(Path(directory))


@lru_cache(maxsize=4)
def _explanation_cached(directory: str, stamp: int) -> np.ndarray | None:
    maps = load_explanation_maps(Path(directory))
    return None if maps is None else np.rint(np.clip(maps, 0.0, 1.0) * 255.0).astype(np.uint8)


def explanation(settings: Settings, job: Job) -> np.ndarray | None:
    """The job's explanation map (what drove the classification), (result frames, rows, cols)
    uint8 with 255 = 1.0 like :func:`heatmap`; None when the pipeline made none;
    FileNotFoundError when the result is not on disk."""
    directory = result_dir(settings, job)
    return _explanation_cached(str(directory), _stamp(directory / "result.json"))


@lru_cache(maxsize=4)
def _anomaly_cached(directory: str, stamp: int, threshold: float) -> np.ndarray | None:
    raw = load_anomaly_map(Path(directory))
    if raw is None:
        return None
    return np.rint(anomaly_display_values(raw, threshold) * 255.0).astype(np.uint8)


def anomaly_map(settings: Settings, job: Job) -> np.ndarray | None:
    """The job's anomaly map as the overlay series shows it (0: the study's least anomalous
    pixel, 255: the calibrated threshold and above), (result frames, rows, cols) uint8; None
    when the pipeline made none; FileNotFoundError when the result is not on disk."""
    directory = result_dir(settings, job)
    stamp = _stamp(directory / "result.json")
    info = review_data(settings, job).get("anomaly")
    if not isinstance(info, dict) or info.get("map_shape") is None:
        return None
    return _anomaly_cached(str(directory), stamp, float(info["threshold"]))


def heatmap(settings: Settings, job: Job) -> np.ndarray | None:
    """The job's probability heat map, (result frames, rows, cols) uint8, None when the pipeline
    made none; FileNotFoundError when the result is not on disk."""
    directory = result_dir(settings, job)
    return _heatmap_cached(str(directory), _stamp(directory / "result.json"))


# -- findings as the review page shows them -----------------------------------------------------

ShownKey = tuple[str, int]  # (SOP Instance UID, 0-based frame) of a frame the page shows


def result_frame_keys(result_frames: Sequence[Mapping[str, Any]]) -> list[ShownKey]:
    """Each result frame (``source_frames`` of the result JSON) as the page's frame key."""
    return [
        (str(ref.get("sop_instance_uid")), int(ref.get("frame_number") or 1) - 1)
        for ref in result_frames
    ]


@dataclass(frozen=True)
class FindingView:
    """One row of the findings table and its drawing on the image."""

    number: int
    tracking_id: str
    label: str
    severity: str
    images: str
    key_image: str
    key_frame: int | None  # the shown frame of its key slice (None: not among the shown frames)
    frames: tuple[int, ...]  # the shown frames it spans
    area_mm2: float | None
    area_pct: float | None
    volume_mm3: float | None
    circularity: float | None
    mean_intensity: float | None
    max_intensity: float | None
    intensity_unit: str  # for people: "arbitrary units", "HU"
    outline: str  # SVG points "x,y ..." of its key-slice outline (a box: its corners), or ""
    label_x: float
    label_y: float


def _outline_points(result: PipelineResult, finding: Finding, key: int) -> str:
    if finding.segment_number is not None and result.segmentation is not None:
        try:
            points = outline(finding_slice_mask(result, finding, key))
        except ValueError:
            return ""
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    box = finding.box
    if box is None:
        return ""
    corners = ((box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1))
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in corners)


def finding_views(
    result: PipelineResult, shown_index: Mapping[ShownKey, int], limit: int = 200
) -> list[FindingView]:
    """The findings with their key slice, the frames they span and their outline, in the page's
    frame numbering (``shown_index``: frame key -> index among the shown frames)."""
    keys = result_frame_keys([vars(f) for f in result.source_frames])
    views = []
    for number, finding in enumerate(result.findings[:limit], start=1):
        key = result.key_index_of(finding)
        m = finding.measurements
        frames = tuple(
            sorted(
                shown_index[keys[i]]
                for i in finding.frame_indices
                if 0 <= i < len(keys) and keys[i] in shown_index
            )
        )
        _f0, r0, c0, _f1, _r1, _c1 = m.bbox
        views.append(
            FindingView(
                number=number,
                tracking_id=finding.tracking_id,
                label=finding.label.name,
                severity=finding.severity.meaning,
                images=result.images_of(finding),
                key_image=result.key_image_of(finding),
                key_frame=shown_index.get(keys[key]) if 0 <= key < len(keys) else None,
                frames=frames,
                area_mm2=m.area_mm2,
                area_pct=m.area_pct,
                volume_mm3=m.volume_mm3,
                circularity=m.circularity,
                mean_intensity=m.mean_intensity,
                max_intensity=m.max_intensity,
                intensity_unit=readable_unit(m.intensity_unit),
                outline=_outline_points(result, finding, key),
                label_x=float(
                    finding.box.x0 if finding.box and finding.segment_number is None else c0
                ),
                label_y=float(
                    finding.box.y0 if finding.box and finding.segment_number is None else r0
                ),
            )
        )
    return views


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
