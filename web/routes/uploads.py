"""``/studies/upload``: manual uploads streamed into ``data_dir``, checked, then imported.

This route reads its own body (``web.upload_stream``) instead of declaring ``File``/``Form``
parameters: FastAPI would parse such a body, spooling files to ``/tmp``, before the login check.
Here the caller is authenticated first (the ``Reviewer`` dependency), the size is capped by the
``BodyLimit`` middleware, the CSRF token is checked on the fields that precede the first file, and
the staging folder is removed whatever happens. It must be included before the studies router so
that ``/studies/{study_uid}`` does not take ``/studies/upload``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from node.db.repositories import audit
from node.ingest.importer import ImportReport
from node.ingest.zipstream import ZipLimits
from web.deps import Principal, Reviewer, StateDep, WebState, csrf_valid
from web.integrations import import_paths
from web.pages import flash, redirect, render
from web.upload_stream import StagedFile, UploadRefused, stage_multipart
from web.uploads import PatientDetails, UploadError, prepare_staged

log = logging.getLogger("pacsnode.web.uploads")
router = APIRouter(tags=["console: studies"])
STALE_STAGING_S = 24 * 3600.0
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "csrf_token": {"type": "string", "description": "console sessions only"},
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "DICOM files, zip archives, PNG or JPEG",
                        },
                        "patient_name": {"type": "string", "maxLength": 64},
                        "patient_id": {"type": "string", "maxLength": 64},
                        "accession_number": {"type": "string", "maxLength": 16},
                        "study_description": {"type": "string", "maxLength": 64},
                    },
                }
            }
        },
    }
}


@router.get("/studies/upload", include_in_schema=False)
def upload_form(request: Request, user: Reviewer) -> Response:
    return render(request, "upload.html", user=user)


def remove_stale_staging(staging: Path, max_age_s: float = STALE_STAGING_S) -> None:
    """Staging folders a crashed process left behind (each upload removes its own when done)."""
    cutoff = time.time() - max_age_s
    for folder in staging.glob("upload-*"):
        with contextlib.suppress(OSError):
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)


def _csrf_check(request: Request, user: Principal) -> Any:
    def check(fields: dict[str, str]) -> None:
        if user.via == "token":  # no ambient cookie authority to abuse
            return
        if not csrf_valid(request, fields.get("csrf_token")):
            raise UploadRefused(403, "CSRF token missing or invalid; reload the page and try again")

    return check


def _public(message: str, folder: Path) -> str:
    """A message for the user: the staging folder (a server path) removed."""
    return message.replace(f"{folder}/", "").replace(str(folder), "the upload")


def _named(line: str, staged: list[StagedFile], folder: Path) -> str:
    """An import report line with the staged path replaced by the name the user uploaded."""
    for item in staged:
        for path in (item.path, item.path.with_suffix(".dcm")):
            if line.startswith(str(path)):
                return item.filename + line[len(str(path)) :]
    return _public(line, folder)


def _import(
    state: WebState,
    fields: dict[str, str],
    staged: list[StagedFile],
    folder: Path,
    actor: str,
) -> tuple[list[Path], ImportReport]:
    """Blocking part of the upload (runs in the thread pool): check, convert, import."""
    details = PatientDetails(
        fields.get("patient_name", ""),
        fields.get("patient_id", ""),
        fields.get("accession_number", ""),
        fields.get("study_description", "Manual upload"),
    ).validated()
    if not staged:
        raise UploadError("Choose at least one file.")
    to_import = prepare_staged(staged, ZipLimits.from_settings(state.settings.zip_import), details)
    try:
        return to_import, import_paths(state.db, state.settings, to_import, actor=actor)
    except (ValueError, OSError) as exc:
        log.warning("upload import failed: %s", exc)
        raise UploadError(f"The files could not be imported: {_public(str(exc), folder)}") from exc


@router.post("/studies/upload", openapi_extra=UPLOAD_BODY, status_code=303)
async def upload(request: Request, state: StateDep, user: Reviewer) -> Response:
    """Import DICOM files, zip archives or pictures like received instances (multipart form)."""
    staging = state.settings.data_dir / "uploads"
    staging.mkdir(parents=True, exist_ok=True)
    await run_in_threadpool(remove_stale_staging, staging)
    folder = Path(tempfile.mkdtemp(prefix="upload-", dir=staging))
    try:
        form = await stage_multipart(request, folder, _csrf_check(request, user))
        to_import, report = await run_in_threadpool(
            _import, state, form.fields, form.files, folder, user.username
        )
    except ClientDisconnect:  # cut off by BodyLimit (which answered 413) or the client left
        return Response(status_code=400)
    except UploadRefused as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    except UploadError as exc:
        status = 415 if "not a DICOM" in str(exc) else 400
        raise HTTPException(status, _public(str(exc), folder)) from exc
    finally:
        await run_in_threadpool(shutil.rmtree, folder, True)
    summary = report.summary()
    stored = report.stored + report.duplicates
    with state.db.write() as session:
        audit.record(
            session,
            "study.upload",
            entity_type="upload",
            actor=user.username,
            detail=f"{len(to_import)} file(s): {summary}",
        )
    refused = report.refused
    if refused:  # a UID that is not a plain UID: the message names the attribute
        shown = "; ".join(_named(line, form.files, folder) for line in report.refusals[:3])
        raise HTTPException(
            400, f"Refused {refused} file(s) with an invalid UID: {shown} ({summary})"
        )
    if not stored:
        errors = "; ".join(_named(e, form.files, folder) for e in report.errors[:3])
        raise HTTPException(400, f"Nothing could be imported: {summary}. {errors}".strip())
    flash(request, f"Uploaded {len(to_import)} file(s): {summary}")
    studies = sorted(report.studies)
    return redirect(f"/studies/{studies[0]}" if len(studies) == 1 else "/studies")
