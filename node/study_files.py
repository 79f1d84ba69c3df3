"""A study's files on request: listing its received instances (the console's download) and
deleting the study, rows and files together (the console's *Delete*).

Files are found the way they were written, never by joining a UID to a path: the received
instances by the paths their ``Instance`` rows stored (each checked to lie in the spool), the
results by the job ids (``Settings.job_results_dir``). Rows go first, in one transaction with the
audit row; files after the commit, so a crash in between leaves orphan files, never rows that
point at missing files.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import Settings
from core.domain import DeliveryState, JobState
from node.db.engine import Database
from node.db.orm import Artifact, Delivery, Instance, Job, Series, Study
from node.db.repositories import audit


class StudyBusy(Exception):
    """A worker or the dispatcher is working on the study right now; deleting would race it."""


@dataclass(frozen=True)
class RemovedStudy:
    instances: int
    files_removed: int
    result_folders: int


def _spool_file(settings: Settings, relative: str) -> Path | None:
    """The stored path resolved, or None when it would leave the spool (an old or forged row)."""
    spool = settings.spool_dir.resolve()
    path = (settings.data_dir / relative).resolve()
    return path if spool in path.parents else None


def _busy(session: Session, study_pk: int) -> str:
    running = session.scalar(
        select(Job.id).where(Job.study_pk == study_pk, Job.state == JobState.RUNNING.value)
    )
    if running is not None:
        return f"job {running} is running"
    sending = session.scalar(
        select(Delivery.id)
        .join(Artifact, Artifact.id == Delivery.artifact_pk)
        .join(Job, Job.id == Artifact.job_pk)
        .where(Job.study_pk == study_pk, Delivery.state == DeliveryState.IN_PROGRESS.value)
    )
    return f"delivery {sending} is being sent" if sending is not None else ""


def remove_study(
    settings: Settings, db: Database, study_uid: str, *, actor: str, why: str
) -> RemovedStudy | None:
    """Delete the study's rows (cascading to series, instances, jobs, artifacts, deliveries,
    reviews) and then its files. None: no such study. Raises ``StudyBusy``."""
    with db.write() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is None:
            return None
        busy = _busy(session, study.id)
        if busy:
            raise StudyBusy(f"the study cannot be deleted now: {busy}")
        paths = list(
            session.scalars(
                select(Instance.path)
                .join(Series, Series.id == Instance.series_pk)
                .where(Series.study_pk == study.id)
            )
        )
        job_ids = list(session.scalars(select(Job.id).where(Job.study_pk == study.id)))
        audit.record(
            session,
            "study.deleted",
            entity_type="study",
            entity_id=study_uid,
            actor=actor,
            detail=f"{why}; {len(paths)} instances, jobs {job_ids}",
        )
        session.delete(study)
    removed = 0
    folders: set[Path] = set()
    for relative in paths:
        path = _spool_file(settings, relative)
        if path is None:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
        folders.update(p for p in path.parents if settings.spool_dir.resolve() in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # empty folders only: a file that arrived meanwhile
            folder.rmdir()  # keeps its folder
    results = [settings.job_results_dir(job_id) for job_id in job_ids]
    for folder in results:
        shutil.rmtree(folder, ignore_errors=True)
    return RemovedStudy(len(paths), removed, sum(1 for f in results if not f.exists()))


@dataclass(frozen=True)
class StoredInstance:
    series_pk: int
    modality: str
    path: str  # relative to data_dir, as stored


def stored_instances(session: Session, study_uid: str) -> list[StoredInstance] | None:
    """The study's instances in series and instance order; None: no such study."""
    study_pk = session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))
    if study_pk is None:
        return None
    rows = session.execute(
        select(Series.id, Series.modality, Instance.path)
        .join(Instance, Instance.series_pk == Series.id)
        .where(Series.study_pk == study_pk)
        .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    )
    return [StoredInstance(pk, modality, path) for pk, modality, path in rows]
