"""Study list with search/paging/sorting, the study page, downloads and force-complete (uploads:
``web.routes.uploads``)."""

from __future__ import annotations

import logging
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response

from node.db.orm import utcnow
from node.db.repositories import audit
from node.db.repositories import jobs as job_repo
from node.db.repositories import search as study_search
from node.db.repositories import studies as study_repo
from web.deps import Reader, Reviewer, RowId, SessionDep, StateDep, verify_csrf
from web.integrations import effective_settings, force_complete
from web.pages import flash, redirect, render
from web.result_views import EXPORTS, artifact_file, export

log = logging.getLogger("pacsnode.web.studies")
router = APIRouter(
    tags=["console: studies"], dependencies=[Depends(verify_csrf)], include_in_schema=False
)
STATUSES = [
    "receiving",
    "complete",
    "processed",
    "skipped",
    "queued",
    "running",
    "succeeded",
    "failed",
    "pending",
    "approved",
    "rejected",
]


@router.get("/studies")
def study_list(
    request: Request,
    session: SessionDep,
    user: Reader,
    patient: Annotated[str, Query(max_length=64)] = "",
    accession: Annotated[str, Query(max_length=64)] = "",
    date_from: Annotated[str, Query(max_length=8, pattern=r"^\d{0,8}$")] = "",
    date_to: Annotated[str, Query(max_length=8, pattern=r"^\d{0,8}$")] = "",
    modality: Annotated[str, Query(max_length=16)] = "",
    status: Annotated[str, Query(max_length=16)] = "",
    sort: Annotated[str, Query(max_length=16)] = "received",
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    page: Annotated[int, Query(ge=1, le=100000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 25,
) -> Response:
    flt = study_search.StudyFilter(patient, accession, date_from, date_to, modality, status)
    result = study_search.search_studies(
        session, flt, page=page, per_page=per_page, sort=sort, descending=order == "desc"
    )
    params = {
        k: v
        for k, v in {
            "patient": patient,
            "accession": accession,
            "date_from": date_from,
            "date_to": date_to,
            "modality": modality,
            "status": status,
            "sort": sort,
            "order": order,
            "per_page": per_page,
        }.items()
        if v
    }

    def page_url(n: int) -> str:
        return "/studies?" + urlencode({**params, "page": n})

    def sort_url(key: str) -> str:
        flip = "asc" if sort == key and order == "desc" else "desc"
        return "/studies?" + urlencode({**params, "sort": key, "order": flip, "page": 1})

    return render(
        request,
        "studies.html",
        {
            "page": result,
            "filter": flt,
            "statuses": STATUSES,
            "sort": sort,
            "order": order,
            "page_url": page_url,
            "sort_url": sort_url,
        },
        user=user,
    )


@router.get("/studies/{study_uid}")
def study_page(
    request: Request, session: SessionDep, state: StateDep, user: Reader, study_uid: str
) -> Response:
    study = study_repo.get_study(session, study_uid, with_results=True)
    if study is None:
        raise HTTPException(404, f"No study with UID {study_uid}")
    jobs = sorted(study.jobs, key=lambda j: j.id, reverse=True)
    # the "send to" choices: enabled destinations as the console has them now
    current = effective_settings(session, state.settings)
    destinations = [d.name for d in current.destinations if d.enabled]
    return render(
        request,
        "study.html",
        {"study": study, "jobs": jobs, "exports": EXPORTS, "destinations": destinations},
        user=user,
    )


@router.post("/studies/{study_uid}/complete")
def complete_now(
    request: Request,
    session: SessionDep,
    user: Reviewer,
    study_uid: str,
    reason: Annotated[str, Form(max_length=500)] = "forced from the console",
) -> Response:
    found = force_complete(session, study_uid, f"{reason} (by {user.username})", utcnow())
    if not found:
        raise HTTPException(404, f"No study with UID {study_uid}")
    audit.record(
        session,
        "study.force_complete",
        entity_type="study",
        entity_id=study_uid,
        actor=user.username,
        detail=reason,
    )
    flash(request, "Completion requested; jobs start at the next sweep.")
    return redirect(f"/studies/{study_uid}")


def _audit_download(
    state: StateDep, user: Reader, entity_type: str, entity_id: int, what: str
) -> None:
    """Patient data leaving the node through the console is recorded (own short transaction)."""
    with state.db.write() as session:
        audit.record(
            session,
            "result.download",
            entity_type=entity_type,
            entity_id=entity_id,
            actor=user.username,
            detail=what,
        )


@router.get("/artifacts/{artifact_id}/download")
def download_artifact(
    session: SessionDep, state: StateDep, user: Reader, artifact_id: RowId
) -> Response:
    artifact = job_repo.get_artifact(session, artifact_id)
    if artifact is None:
        raise HTTPException(404, "No such result object")
    try:
        path = artifact_file(state.settings, artifact)
    except FileNotFoundError as exc:
        raise HTTPException(404, "The result file is no longer on disk") from exc
    if not path.is_file():
        raise HTTPException(404, "The result file is no longer on disk")
    _audit_download(state, user, "artifact", artifact.id, artifact.kind)
    return FileResponse(
        path,
        media_type="application/dicom",
        filename=f"{artifact.kind}_{artifact.sop_instance_uid}.dcm",
    )


@router.get("/jobs/{job_id}/export/{which}")
def export_job(
    session: SessionDep, state: StateDep, user: Reader, job_id: RowId, which: str
) -> Response:
    if which not in EXPORTS:
        raise HTTPException(404, f"Unknown export {which!r}; choose one of {sorted(EXPORTS)}")
    job = job_repo.get_job(session, job_id)
    if job is None:
        raise HTTPException(404, "No such job")
    if job.state != "succeeded":  # no result to export: say why instead of an empty file
        detail = f": {job.error.splitlines()[0][:300]}" if job.error else ""
        raise HTTPException(
            409, f"Job {job.id} is {job.state}; it has no results to export{detail}"
        )
    try:
        content, media_type, filename = export(state.settings, job, which)
    except FileNotFoundError:
        raise HTTPException(404, "The job's result files are no longer on disk") from None
    _audit_download(state, user, "job", job.id, which)
    name = f"job{job.id}_{filename}"
    return Response(
        content,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
