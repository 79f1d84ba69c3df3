"""Study list with search/paging/sorting, the study page, downloads, uploads and force-complete."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from pydicom.uid import generate_uid

from node.db.orm import utcnow
from node.db.repositories import audit, console
from web.deps import Reader, Reviewer, SessionDep, StateDep, verify_csrf
from web.integrations import Unavailable, force_complete, import_paths
from web.pages import flash, redirect, render
from web.results import EXPORTS, artifact_file, export
from web.uploads import (
    PatientDetails,
    UploadError,
    check_zip,
    picture_to_secondary_capture,
    sniff,
)

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
    flt = console.StudyFilter(patient, accession, date_from, date_to, modality, status)
    result = console.search_studies(
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


@router.get("/studies/upload")
def upload_form(request: Request, user: Reviewer) -> Response:
    return render(request, "upload.html", user=user)


def _save_upload(upload: UploadFile, folder: Path, index: int, max_bytes: int) -> tuple[Path, str]:
    target = folder / f"{index:04d}_{Path(upload.filename or 'file').name[-80:]}"
    with target.open("wb") as out:
        shutil.copyfileobj(upload.file, out, length=1 << 20)
    if target.stat().st_size > max_bytes:
        raise UploadError(f"{upload.filename}: larger than the upload limit")
    with target.open("rb") as fh:
        kind = sniff(fh.read(132))
    if kind == "unknown":
        raise UploadError(f"{upload.filename}: not a DICOM file, zip archive, PNG or JPEG image")
    return target, kind


@router.post("/studies/upload")
def upload(
    request: Request,
    state: StateDep,
    user: Reviewer,
    files: Annotated[list[UploadFile], File(description="DICOM files, zip archives, PNG or JPEG")],
    patient_name: Annotated[str, Form(max_length=64)] = "",
    patient_id: Annotated[str, Form(max_length=64)] = "",
    accession_number: Annotated[str, Form(max_length=16)] = "",
    study_description: Annotated[str, Form(max_length=64)] = "Manual upload",
) -> Response:
    """Persist the uploaded instances like any received ones (no session held while importing)."""
    max_bytes = int(state.settings.web.max_upload_mb * 1024 * 1024)
    staging = state.settings.data_dir / "uploads"
    staging.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="upload-", dir=staging))
    try:
        details = PatientDetails(
            patient_name, patient_id, accession_number, study_description
        ).validated()
        files = [f for f in files if f.filename]
        if not files:
            raise UploadError("Choose at least one file.")
        saved = [_save_upload(f, folder, i, max_bytes) for i, f in enumerate(files)]
        if sum(p.stat().st_size for p, _ in saved) > max_bytes:
            raise UploadError("The files together are larger than the upload limit.")
        to_import: list[Path] = []
        study_uid, series_uid, number = generate_uid(), generate_uid(), 0
        for path, kind in saved:
            if kind in ("png", "jpeg"):
                if not details.patient_id and not details.patient_name:
                    raise UploadError("Pictures need a patient name or ID to be wrapped as DICOM.")
                number += 1
                ds = picture_to_secondary_capture(
                    path.read_bytes(), details, study_uid, series_uid, number
                )
                dcm = path.with_suffix(".dcm")
                ds.save_as(dcm, enforce_file_format=True)
                path.unlink()
                to_import.append(dcm)
            else:
                if kind == "zip":
                    check_zip(path, max_bytes)
                to_import.append(path)
        try:
            report = import_paths(state.db, state.settings, to_import)
        except Unavailable as exc:
            raise HTTPException(503, "Import is not available on this node yet.") from exc
        except (ValueError, OSError) as exc:
            raise UploadError(f"The files could not be imported: {exc}") from exc
    except UploadError as exc:
        raise HTTPException(415 if "not a DICOM" in str(exc) else 400, str(exc)) from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    summary = report.summary() if hasattr(report, "summary") else str(report)
    stored = int(getattr(report, "stored", 0)) + int(getattr(report, "duplicates", 0))
    with state.db.write() as session:
        audit.record(
            session,
            "study.upload",
            entity_type="upload",
            actor=user.username,
            detail=f"{len(to_import)} file(s): {summary}",
        )
    if not stored:
        errors = "; ".join(getattr(report, "errors", [])[:3])
        raise HTTPException(400, f"Nothing could be imported: {summary}. {errors}".strip())
    flash(request, f"Uploaded {len(to_import)} file(s): {summary}")
    studies = sorted(getattr(report, "studies", set()))
    return redirect(f"/studies/{studies[0]}" if len(studies) == 1 else "/studies")


@router.get("/studies/{study_uid}")
def study_page(request: Request, session: SessionDep, user: Reader, study_uid: str) -> Response:
    study = console.get_study(session, study_uid)
    if study is None:
        raise HTTPException(404, f"No study with UID {study_uid}")
    jobs = sorted(study.jobs, key=lambda j: j.id, reverse=True)
    return render(
        request, "study.html", {"study": study, "jobs": jobs, "exports": EXPORTS}, user=user
    )


@router.post("/studies/{study_uid}/complete")
def complete_now(
    request: Request,
    session: SessionDep,
    user: Reviewer,
    study_uid: str,
    reason: Annotated[str, Form(max_length=500)] = "forced from the console",
) -> Response:
    try:
        found = force_complete(session, study_uid, f"{reason} (by {user.username})", utcnow())
    except Unavailable as exc:
        raise HTTPException(503, "Forcing completion is not available on this node yet.") from exc
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
    session: SessionDep, state: StateDep, user: Reader, artifact_id: int
) -> Response:
    artifact = console.get_artifact(session, artifact_id)
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
    session: SessionDep, state: StateDep, user: Reader, job_id: int, which: str
) -> Response:
    if which not in EXPORTS:
        raise HTTPException(404, f"Unknown export {which!r}; choose one of {sorted(EXPORTS)}")
    job = console.get_job(session, job_id)
    if job is None:
        raise HTTPException(404, "No such job")
    if job.state != "succeeded":  # no result to export: say why instead of an empty file
        detail = f": {job.error.splitlines()[0][:300]}" if job.error else ""
        raise HTTPException(
            409, f"Job {job.id} is {job.state}; it has no results to export{detail}"
        )
    content, media_type, filename = export(state.settings, job, which)
    _audit_download(state, user, "job", job.id, which)
    name = f"job{job.id}_{filename}"
    return Response(
        content,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
