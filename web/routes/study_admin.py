"""A study's source download (zip) and its deletion.

Downloading is for any reader (the console already shows the same images) and is audited;
deleting is for admins, needs the form's confirmation box ticked, is refused while a worker or the
dispatcher is busy with the study, and removes rows and files (``node.study_files``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import Response, StreamingResponse

from node.db.repositories import audit
from web.deps import AdminUser, Reader, SessionDep, StateDep, verify_csrf
from web.integrations import StoredInstance, StudyBusy, remove_study, stored_instances
from web.pages import flash, redirect
from web.study_files import SourceFile, zip_stream

router = APIRouter(
    tags=["console: studies"], dependencies=[Depends(verify_csrf)], include_in_schema=False
)


def _numbered(rows: list[StoredInstance]) -> list[SourceFile]:
    files: list[SourceFile] = []
    series_index: dict[int, int] = {}
    counts: dict[int, int] = {}
    for row in rows:
        number = series_index.setdefault(row.series_pk, len(series_index) + 1)
        counts[row.series_pk] = counts.get(row.series_pk, 0) + 1
        files.append(SourceFile(number, row.modality, counts[row.series_pk], row.path))
    return files


@router.get("/studies/{study_uid}/download.zip")
def download_study(session: SessionDep, state: StateDep, user: Reader, study_uid: str) -> Response:
    rows = stored_instances(session, study_uid)
    if rows is None:
        raise HTTPException(404, f"No study with UID {study_uid}")
    with state.db.write() as log_session:  # a download is recorded even though this is a GET
        audit.record(
            log_session,
            "study.download",
            entity_type="study",
            entity_id=study_uid,
            actor=user.username,
            detail=f"{len(rows)} instances as zip",
        )
    return StreamingResponse(
        zip_stream(state.settings, _numbered(rows)),
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="study.zip"'},
    )


@router.post("/studies/{study_uid}/delete")
def delete_study(
    request: Request,
    state: StateDep,
    user: AdminUser,
    study_uid: str,
    confirm: Annotated[str, Form(max_length=8)] = "",
) -> Response:
    if confirm != "yes":
        raise HTTPException(400, "tick the confirmation box to delete the study")
    try:
        removed = remove_study(
            state.settings, state.db, study_uid, actor=user.username, why="deleted in the console"
        )
    except StudyBusy as exc:
        raise HTTPException(409, str(exc)) from exc
    if removed is None:
        raise HTTPException(404, f"No study with UID {study_uid}")
    flash(
        request,
        f"Study deleted: {removed.instances} instances ({removed.files_removed} files) and "
        f"{removed.result_folders} result folders.",
    )
    return redirect("/studies")
