"""The job a review shows, the source frames it shows of it and the job's SEG masks on them.

Shared by the review page (:mod:`web.routes.review`) and its image routes
(:mod:`web.routes.review_images`), so that a frame's index means the same frame in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from sqlalchemy.orm import Session

from node.db.orm import Job
from node.db.repositories import instances
from node.db.repositories import jobs as job_repo
from node.db.repositories import studies as study_repo
from web.deps import StateDep
from web.imaging import RenderError, SegMasks, read_seg_masks
from web.result_views import artifact_file

MAX_FRAMES = 2000


@dataclass(frozen=True)
class FrameRef:
    path: str  # relative to data_dir
    sop_instance_uid: str
    frame: int  # 0-based within the instance


def job_or_404(session: Session, job_id: int) -> Job:
    job = job_repo.get_job(session, job_id)
    if job is None:
        raise HTTPException(404, f"No job {job_id}")
    return job


def _source_series_uid(session: Session, job: Job, data: dict[str, Any]) -> str | None:
    uid = data.get("series_instance_uid")
    if isinstance(uid, str) and uid:
        return uid
    study = study_repo.get_study(session, job.study.study_instance_uid, with_results=True)
    image_series = [
        s for s in (study.series if study else []) if s.modality not in ("SEG", "SR", "PR")
    ]
    return (
        max(image_series, key=lambda s: s.instance_count).series_instance_uid
        if image_series
        else None
    )


def source_frames(session: Session, job: Job, data: dict[str, Any]) -> list[FrameRef]:
    uid = _source_series_uid(session, job, data)
    if uid is None:
        return []
    frames: list[FrameRef] = []
    for inst in instances.instances_of_series(session, uid):
        for f in range(max(inst.number_of_frames, 1)):
            frames.append(FrameRef(inst.path, inst.sop_instance_uid, f))
            if len(frames) >= MAX_FRAMES:
                return frames
    return frames


@lru_cache(maxsize=16)
def _seg_cached(path: str, mtime_ns: int, shown: tuple[tuple[str, int], ...]) -> SegMasks:
    return read_seg_masks(Path(path), shown)


def seg_masks(state: StateDep, job: Job, frames: list[FrameRef]) -> SegMasks | None:
    shown = tuple((f.sop_instance_uid, f.frame) for f in frames)
    for artifact in job.artifacts:
        if artifact.kind == "seg":
            try:
                path = artifact_file(state.settings, artifact)
                return _seg_cached(str(path), path.stat().st_mtime_ns, shown)
            except (FileNotFoundError, RenderError):
                return None
    return None
