"""``POST /api/predict`` and ``/api/predict/batch``: run a pipeline on files a script sends.

The console process never loads PyTorch (``tests/app/test_wiring.py``), so a prediction is not
computed here: the files are staged and checked exactly like a console upload (``BodyLimit`` at
``web.max_upload_mb``, ``web.upload_stream``, the zip limits, content sniffing), imported like
received instances, and one job per study is queued in the normal job table
(``node.jobs.predict``). A worker runs it; the synchronous route waits for the job up to
``web.predict_timeout_s`` and answers 504 with a batch id to poll when it takes longer.

Storage: by default a predicted study is transient (source ``predict``): the synchronous answer
removes it, its results and its files once sent; a batch's studies stay ``web.predict_retention_s``
after their jobs end, so that polls can fetch them, and are then removed by the next prediction
request. ``keep=true`` keeps the study in the study list (source ``api``), like an upload.
Nothing is sent to a PACS unless ``deliver=true``: then the routing rules' destinations get the
results (held for review when the pipeline requires it), and the study stays until the retention.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as FastPath
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from core.config import ConfigError
from core.domain import JobState
from node.db.orm import Job
from node.db.repositories import audit
from node.ingest.importer import ImportReport
from node.ingest.zipstream import ZipLimits
from node.jobs.predict import (
    KEPT_SOURCE,
    TRANSIENT_SOURCE,
    PredictionRefused,
    PredictionState,
    prediction_states,
    queue_prediction,
    stale_transient_studies,
)
from node.results.store import load_result
from node.study_files import StudyBusy
from web.deps import Predictor, Principal, StateDep, WebState
from web.integrations import import_paths, pipeline_configs, remove_study, route_destinations
from web.routes.uploads import _csrf_check, _public, remove_stale_staging
from web.upload_stream import StagedFile, UploadRefused, stage_multipart
from web.uploads import PatientDetails, UploadError, prepare_staged

log = logging.getLogger("pacsnode.web.predict")
router = APIRouter(prefix="/api", tags=["api: predict"])
POLL_INTERVAL_S = 0.25
MAX_BATCH_STUDIES = 500
TERMINAL = (JobState.SUCCEEDED.value, JobState.FAILED.value)
TRUE = ("1", "true", "on", "yes")
PICTURE_DETAILS = PatientDetails("", "PREDICT", "", "API prediction")
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files", "pipeline"],
                    "properties": {
                        "csrf_token": {
                            "type": "string",
                            "description": "console sessions only, sent before the files",
                        },
                        "pipeline": {
                            "type": "string",
                            "description": "an enabled pipeline (GET /api/pipelines)",
                        },
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "DICOM files, zip archives of DICOM files, PNG or "
                            "JPEG (colour is turned to grey)",
                        },
                        "pixel_spacing_mm": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "maximum": 100,
                            "description": "PNG/JPEG only: the size of one pixel, for mm figures",
                        },
                        "deliver": {
                            "type": "boolean",
                            "default": False,
                            "description": "send the results to the destinations the routing "
                            "rules choose (else nothing is written to any PACS)",
                        },
                        "keep": {
                            "type": "boolean",
                            "default": False,
                            "description": "keep the study and its results in the study list",
                        },
                    },
                }
            }
        },
    }
}


class ArtifactLink(BaseModel):
    id: int
    kind: str
    download_url: str | None = Field(
        description="None when the study was transient and has been removed with the answer"
    )


class PredictionOut(BaseModel):
    job_id: int
    study_instance_uid: str
    pipeline: str
    state: str = Field(description="queued, running, succeeded or failed")
    error: str
    result: dict[str, Any] | None = Field(
        description="the PipelineResult as JSON (findings, measurements, classification "
        "probabilities, severity, conclusion, model runs with devices, timings) once succeeded"
    )
    summary: dict[str, Any] | None = None
    artifacts: list[ArtifactLink]


class BatchOut(BaseModel):
    batch_id: str
    poll_url: str
    done: bool
    predictions: list[PredictionOut]


@dataclass(frozen=True)
class Submitted:
    job_ids: tuple[int, ...]
    transient: bool  # removed with the synchronous answer
    deliver: bool


# -- batch ids: the job ids, bound to the caller by an HMAC (no table, no guessing) ---------------


def _mac(secret: str, user_id: int, ids: str) -> str:
    digest = hmac.new(
        secret.encode(), f"predict-batch:{user_id}:{ids}".encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def make_batch_id(secret: str, user_id: int, job_ids: tuple[int, ...]) -> str:
    ids = "-".join(str(i) for i in job_ids)
    return f"{ids}.{_mac(secret, user_id, ids)}"


def batch_jobs(secret: str, user_id: int, value: str) -> tuple[int, ...] | None:
    """The job ids of a batch id this caller was given; None for any other string."""
    ids, _, mac = value.partition(".")
    if not ids or not hmac.compare_digest(mac.encode(), _mac(secret, user_id, ids).encode()):
        return None
    try:
        return tuple(int(i) for i in ids.split("-"))
    except ValueError:
        return None


# -- staging and queueing -------------------------------------------------------------------------


def _flag(fields: dict[str, str], name: str) -> bool:
    return fields.get(name, "").strip().lower() in TRUE


def _spacing(fields: dict[str, str]) -> float | None:
    raw = fields.get("pixel_spacing_mm", "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise UploadError(f"pixel_spacing_mm must be a number, not {raw[:20]!r}") from None
    if not 0 < value <= 100:
        raise UploadError("pixel_spacing_mm must be > 0 and at most 100")
    return value


def _check_pipeline(state: WebState, name: str) -> tuple[str, bool]:
    """(version, review_required) of an enabled pipeline; 4xx naming it otherwise."""
    if not name:
        raise PredictionRefused(400, "name the pipeline to run in the 'pipeline' field")
    with state.db.read() as session:
        try:
            configs = pipeline_configs(state.settings, session)
        except ConfigError as exc:
            raise PredictionRefused(503, f"pipeline definitions cannot be read: {exc}") from exc
    cfg = configs.get(name)
    if cfg is None:
        known = ", ".join(sorted(configs)) or "none"
        raise PredictionRefused(404, f"no pipeline {name[:64]!r} (installed: {known})")
    if not cfg.enabled:
        raise PredictionRefused(409, f"pipeline {name!r} is disabled")
    return cfg.version, cfg.review_required


def remove_stale_predictions(state: WebState) -> None:
    """Transient studies whose retention is over (batches nobody fetched, crashed requests)."""
    cutoff = state.clock() - timedelta(seconds=state.settings.web.predict_retention_s)
    with state.db.read() as session:
        stale = stale_transient_studies(session, cutoff)
    for study_uid in stale:
        try:
            remove_study(
                state.settings, state.db, study_uid, actor="api", why="prediction retention over"
            )
        except StudyBusy:
            continue


def _discard(state: WebState, study_uids: set[str], actor: str) -> None:
    """Remove the transient studies this request imported (an error, or the answer sent)."""
    for study_uid in sorted(study_uids):
        with state.db.read() as session:
            stale = stale_transient_studies(session, state.clock() + timedelta(hours=1))
        if study_uid not in stale:  # kept, or someone else's job is still open on it
            continue
        try:
            remove_study(
                state.settings, state.db, study_uid, actor=actor, why="api prediction answered"
            )
        except StudyBusy:
            log.warning("prediction study %s left for the retention sweep", study_uid)


def _import_report_problem(report: ImportReport, folder: Path) -> str:
    if report.refused:
        return f"refused {report.refused} file(s) with an invalid UID ({report.summary()})"
    if not report.stored + report.duplicates:
        errors = "; ".join(_public(e, folder) for e in report.errors[:3])
        return f"nothing could be imported: {report.summary()}. {errors}".strip()
    return ""


def _queue(
    state: WebState,
    user: Principal,
    fields: dict[str, str],
    staged: list[StagedFile],
    folder: Path,
    batch: bool,
) -> Submitted:
    """Blocking part (thread pool): check the fields, convert, import, queue one job per study."""
    name = fields.get("pipeline", "").strip()
    version, review_required = _check_pipeline(state, name)
    spacing = _spacing(fields)
    deliver, keep = _flag(fields, "deliver"), _flag(fields, "keep")
    if not staged:
        raise UploadError("send at least one file in the 'files' field")
    remove_stale_predictions(state)
    paths = prepare_staged(
        staged,
        ZipLimits.from_settings(state.settings.zip_import),
        PICTURE_DETAILS,
        greyscale=True,
        pixel_spacing_mm=spacing,
        study_per_picture=batch,  # one synchronous request: one study; a batch: one per picture
    )
    source = KEPT_SOURCE if keep else TRANSIENT_SOURCE
    try:
        report = import_paths(state.db, state.settings, paths, user.username, source=source)
    except (ValueError, OSError) as exc:
        raise UploadError(f"the files could not be imported: {_public(str(exc), folder)}") from exc
    studies = set(report.studies)
    try:
        problem = _import_report_problem(report, folder)
        if problem:
            raise UploadError(problem)
        if not batch and len(studies) != 1:
            raise UploadError(
                f"/api/predict takes one study; these files hold {len(studies)}: "
                "send them to /api/predict/batch"
            )
        if len(studies) > MAX_BATCH_STUDIES:
            raise UploadError(f"at most {MAX_BATCH_STUDIES} studies per batch")
        job_ids = []
        with state.db.write() as session:
            for study_uid in sorted(studies):
                destinations = (
                    route_destinations(state.settings, session, study_uid) if deliver else ()
                )
                if deliver and not destinations:
                    raise PredictionRefused(
                        422, f"deliver=true, but no routing rule sends study {study_uid} anywhere"
                    )
                job_ids.append(
                    queue_prediction(
                        session,
                        study_uid,
                        sources=(source,),
                        pipeline_name=name,
                        pipeline_version=version,
                        review_required=review_required,
                        destinations=destinations,
                        max_attempts=state.settings.jobs.max_attempts,
                        actor=user.username,
                        now=state.clock(),
                    )
                )
            audit.record(
                session,
                "api.predict",
                entity_type="job",
                entity_id=",".join(str(i) for i in job_ids)[:64],
                actor=user.username,
                detail=f"pipeline {name}, {len(staged)} file(s), {report.summary()}, "
                f"batch={batch} deliver={deliver} keep={keep}",
            )
    except (UploadError, PredictionRefused):
        if source == TRANSIENT_SOURCE:
            _discard(state, studies, user.username)
        raise
    return Submitted(tuple(job_ids), transient=not keep and not deliver, deliver=deliver)


async def _submit(request: Request, state: WebState, user: Principal, batch: bool) -> Submitted:
    staging = state.settings.data_dir / "uploads"
    staging.mkdir(parents=True, exist_ok=True)
    await run_in_threadpool(remove_stale_staging, staging)
    folder = Path(tempfile.mkdtemp(prefix="upload-predict-", dir=staging))
    try:
        form = await stage_multipart(request, folder, _csrf_check(request, user))
        return await run_in_threadpool(_queue, state, user, form.fields, form.files, folder, batch)
    except ClientDisconnect as exc:  # cut off by BodyLimit (which answered 413) or the client left
        raise HTTPException(400, "the request body ended early") from exc
    except UploadRefused as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    except PredictionRefused as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    except UploadError as exc:
        status = 415 if "not a DICOM" in str(exc) else 400
        raise HTTPException(status, _public(str(exc), folder)) from exc
    finally:
        await run_in_threadpool(shutil.rmtree, folder, True)


# -- answers --------------------------------------------------------------------------------------


def _prediction(state: WebState, item: PredictionState, links: bool) -> PredictionOut:
    result = summary = None
    if item.state == JobState.SUCCEEDED.value:
        try:
            result = load_result(state.settings.job_results_dir(item.job_id)).to_json_dict()
        except (OSError, ValueError, KeyError) as exc:
            log.warning("job %s: result cannot be read: %s", item.job_id, exc)
    with state.db.read() as session:
        job = session.get(Job, item.job_id)
        summary = dict(job.summary or {}) if job is not None and job.summary else None
    return PredictionOut(
        job_id=item.job_id,
        study_instance_uid=item.study_instance_uid,
        pipeline=item.pipeline_name,
        state=item.state,
        error=item.error,
        result=result,
        summary=summary,
        artifacts=[
            ArtifactLink(
                id=artifact_id,
                kind=kind,
                download_url=f"/artifacts/{artifact_id}/download" if links else None,
            )
            for artifact_id, kind, _ in item.artifacts
        ],
    )


def _states(state: WebState, job_ids: tuple[int, ...]) -> list[PredictionState]:
    with state.db.read() as session:
        return prediction_states(session, job_ids)


def _multipart(out: PredictionOut, files: list[tuple[str, Path]]) -> Response:
    """The JSON answer, then each DICOM result object, as ``multipart/mixed``."""
    boundary = secrets.token_hex(16)
    chunks = [
        f"--{boundary}\r\nContent-Type: application/json\r\n"
        'Content-Disposition: inline; name="result"\r\n\r\n'.encode(),
        out.model_dump_json().encode(),
        b"\r\n",
    ]
    for name, path in files:
        chunks += [
            f"--{boundary}\r\nContent-Type: application/dicom\r\n"
            f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'.encode(),
            path.read_bytes(),
            b"\r\n",
        ]
    chunks.append(f"--{boundary}--\r\n".encode())
    return Response(b"".join(chunks), media_type=f"multipart/mixed; boundary={boundary}")


def _answer(
    state: WebState, submitted: Submitted, item: PredictionState, outputs: str, actor: str
) -> Response:
    """The finished prediction's answer; a transient study is removed once it is built."""
    out = _prediction(state, item, links=not submitted.transient)
    try:
        if item.state == JobState.FAILED.value:
            return JSONResponse(
                {
                    "detail": f"pipeline {item.pipeline_name} failed: {item.error}",
                    **out.model_dump(),
                },
                status_code=422,
            )
        if outputs == "dicom":
            files = [
                (f"{kind}-{artifact_id}.dcm", state.settings.data_dir / path)
                for artifact_id, kind, path in item.artifacts
            ]
            return _multipart(out, files)
        return JSONResponse(out.model_dump())
    finally:
        if submitted.transient:
            _discard(state, {item.study_instance_uid}, actor)


@router.post(
    "/predict",
    openapi_extra=PREDICT_BODY,
    response_model=PredictionOut,
    responses={
        200: {
            "description": "the prediction; with ?outputs=dicom a multipart/mixed body: this JSON "
            "first, then each DICOM result object (SEG, SR, PDF, overlay)",
        },
        400: {"description": "bad fields or files that cannot be read (the message says which)"},
        404: {"description": "no such pipeline"},
        409: {"description": "the pipeline is disabled, or the study is already on the node"},
        415: {"description": "a file that is not DICOM, zip, PNG or JPEG"},
        422: {"description": "the pipeline failed on this input (the message says why)"},
        504: {"description": "not done within web.predict_timeout_s: poll batch_id"},
    },
)
async def predict(
    request: Request,
    state: StateDep,
    user: Predictor,
    outputs: Annotated[str, Query(pattern="^(json|dicom)$")] = "json",
) -> Response:
    """Run one pipeline on one study sent as DICOM files, a zip, or PNG/JPEG pictures, and wait.

    A worker runs it through the job queue; the answer comes when the job ends, or a 504 with a
    batch id to poll after ``web.predict_timeout_s``. Nothing is stored or sent unless asked."""
    submitted = await _submit(request, state, user, batch=False)
    deadline = time.monotonic() + state.settings.web.predict_timeout_s
    while True:
        items = await run_in_threadpool(_states, state, submitted.job_ids)
        if not items:
            raise HTTPException(410, "the prediction's job was removed meanwhile")
        if items[0].state in TERMINAL:
            return await run_in_threadpool(
                _answer, state, submitted, items[0], outputs, user.username
            )
        if time.monotonic() >= deadline:
            bid = make_batch_id(state.settings.secret_key, user.user_id, submitted.job_ids)
            return JSONResponse(
                {
                    "detail": f"not done within {state.settings.web.predict_timeout_s:g} s; "
                    f"poll /api/predict/batch/{bid}",
                    "job_id": submitted.job_ids[0],
                    "batch_id": bid,
                    "poll_url": f"/api/predict/batch/{bid}",
                },
                status_code=504,
            )
        await asyncio.sleep(POLL_INTERVAL_S)


def _batch_out(state: WebState, user: Principal, job_ids: tuple[int, ...]) -> BatchOut:
    items = _states(state, job_ids)
    bid = make_batch_id(state.settings.secret_key, user.user_id, job_ids)
    return BatchOut(
        batch_id=bid,
        poll_url=f"/api/predict/batch/{bid}",
        done=all(i.state in TERMINAL for i in items),
        predictions=[_prediction(state, i, links=True) for i in items],
    )


@router.post(
    "/predict/batch",
    openapi_extra=PREDICT_BODY,
    response_model=BatchOut,
    status_code=202,
    responses={
        400: {"description": "bad fields or files that cannot be read (the message says which)"},
        404: {"description": "no such pipeline"},
        409: {"description": "the pipeline is disabled, or a study is already on the node"},
        415: {"description": "a file that is not DICOM, zip, PNG or JPEG"},
    },
)
async def predict_batch(request: Request, state: StateDep, user: Predictor) -> BatchOut:
    """Queue one job per study (each PNG/JPEG is its own study) and answer at once with a
    batch id; poll ``GET /api/predict/batch/{batch_id}`` for the states and results."""
    submitted = await _submit(request, state, user, batch=True)
    return await run_in_threadpool(_batch_out, state, user, submitted.job_ids)


@router.get("/predict/batch/{batch_id}", response_model=BatchOut)
def predict_batch_state(
    state: StateDep, user: Predictor, batch_id: Annotated[str, FastPath(max_length=8192)]
) -> BatchOut:
    """The batch's jobs: state, error, and the result once succeeded. Only its caller may poll
    it; results stay ``web.predict_retention_s`` after the jobs end (unless ``keep=true``)."""
    job_ids = batch_jobs(state.settings.secret_key, user.user_id, batch_id)
    if job_ids is None:
        raise HTTPException(404, "no such batch")
    return _batch_out(state, user, job_ids)
