"""Bulk exports: the findings CSV and the PDFs zip of every job a worklist, study-list or jobs-page
filter selects, streamed (one job's result in memory at a time).

The same filters as the pages (so "export what I see" is the page's query string on another
path), for radiologists and admins: a bulk export is many patients' data leaving the node, so
viewers, who may open one job's export, may not take them wholesale; each is audited. A selection
in which no job has results answers 409 with why, as one failed job's export does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.orm import Session

from core.domain import JobState
from node.db.repositories import audit, job_list, worklist
from node.db.repositories import jobs as job_repo
from node.db.repositories import search as study_search
from web.deps import Reviewer, SessionDep, StateDep
from web.result_views import BULK_EXPORTS, BulkJob, bulk_csv, bulk_pdfs
from web.routes.worklist import WorklistQuery

router = APIRouter(tags=["console: exports"], include_in_schema=False)
MAX_JOBS = 5000  # a larger selection is refused: narrow the filter (dates, pipeline)


def _study_filter(
    patient: Annotated[str, Query(max_length=64)] = "",
    accession: Annotated[str, Query(max_length=64)] = "",
    date_from: Annotated[str, Query(max_length=8, pattern=r"^\d{0,8}$")] = "",
    date_to: Annotated[str, Query(max_length=8, pattern=r"^\d{0,8}$")] = "",
    modality: Annotated[str, Query(max_length=16)] = "",
    status: Annotated[str, Query(max_length=16)] = "",
) -> study_search.StudyFilter:
    """The study list's filters (``/studies``), from the same query string."""
    return study_search.StudyFilter(patient, accession, date_from, date_to, modality, status)


StudyQuery = Annotated[study_search.StudyFilter, Depends(_study_filter)]


def _export(
    session: Session, state: StateDep, user: Reviewer, which: str, ids: list[int], source: str
) -> Response:
    if which not in BULK_EXPORTS:
        raise HTTPException(404, f"Unknown export {which!r}; choose one of {sorted(BULK_EXPORTS)}")
    if not ids:
        raise HTTPException(404, "No job matches this filter")
    if len(ids) > MAX_JOBS:
        raise HTTPException(413, f"More than {MAX_JOBS} jobs match; narrow the filter")
    ready: list[BulkJob] = []
    skipped: list[str] = []
    states: Counter[str] = Counter()
    for job_id in ids:
        job = job_repo.get_job(session, job_id)
        if job is None:
            continue
        if job.state == JobState.SUCCEEDED.value:
            ready.append(BulkJob.of(job))
            continue
        states[job.state] += 1
        reason = f": {job.error.splitlines()[0][:300]}" if job.error else ""
        skipped.append(f"job {job.id} ({job.study.study_instance_uid}) is {job.state}{reason}")
    if not ready:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        detail = f" ({skipped[0]})" if len(skipped) == 1 else f" ({counts})"
        raise HTTPException(409, f"No job in this selection has results to export{detail}")
    with state.db.write() as log:  # recorded before the first byte leaves (a GET reads only)
        audit.record(
            log,
            "result.bulk_download",
            entity_type="export",
            entity_id=source,
            actor=user.username,
            detail=f"{which}: {len(ready)} job(s) {[j.job_id for j in ready][:50]}, "
            f"{len(skipped)} without results",
        )
    media_type, filename = BULK_EXPORTS[which]
    body: Iterator[str] | Iterator[bytes] = (
        bulk_csv(state.settings, ready)
        if which == "csv"
        else bulk_pdfs(state.settings, ready, skipped)
    )
    return StreamingResponse(
        body,
        media_type=media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{source}_{filename}"',
            "X-Export-Jobs": str(len(ready)),
            "X-Export-Skipped": str(len(skipped)),
        },
    )


@router.get("/worklist/export/{which}")
def export_worklist(
    session: SessionDep, state: StateDep, user: Reviewer, flt: WorklistQuery, which: str
) -> Response:
    """``csv`` or ``pdfs`` of every job the worklist's filters select (every page)."""
    ids = worklist.job_ids(session, flt, MAX_JOBS + 1)
    return _export(session, state, user, which, ids, "worklist")


@router.get("/studies/export/{which}")
def export_studies(
    session: SessionDep, state: StateDep, user: Reviewer, flt: StudyQuery, which: str
) -> Response:
    """``csv`` or ``pdfs`` of the jobs of every study the study list's filters select."""
    ids = study_search.job_ids(session, flt, MAX_JOBS + 1)
    return _export(session, state, user, which, ids, "studies")


@router.get("/jobs/export/{which}")
def export_jobs(
    session: SessionDep,
    state: StateDep,
    user: Reviewer,
    which: str,
    job_state: Annotated[str, Query(alias="state", max_length=16)] = "",
    pipeline: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    """``csv`` or ``pdfs`` of every job the jobs page's filters (state, pipeline) select."""
    if job_state and job_state not in {s.value for s in JobState}:
        raise HTTPException(400, f"state must be one of {', '.join(s.value for s in JobState)}")
    ids = job_list.job_ids(session, state=job_state, pipeline=pipeline, limit=MAX_JOBS + 1)
    return _export(session, state, user, which, ids, "jobs")
