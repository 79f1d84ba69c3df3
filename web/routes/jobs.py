"""The jobs page: the live queue with its actions (retry, cancel, re-run with another pipeline,
resend every failed delivery), for admins and radiologists; above it a warning for each queue no
live worker consumes ("queue gpu has no worker") and, below, the worker registry.

The page polls ``/jobs/rows`` (the same table body, rendered by the same template) every few
seconds from ``web/static/live.js``, so the queue moves without a reload and without a second
rendering of the rows in JavaScript. Every action is a CSRF-checked form post, audited by the
queue functions it calls, and answers with a redirect back to the filtered page.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import Response

from core.config import ConfigError
from core.domain import JobState
from node.db.repositories import audit, job_list, worklist
from web.deps import Reviewer, RowId, SessionDep, StateDep, verify_csrf
from web.integrations import (
    cancel_job,
    pipeline_configs,
    requeue_job,
    rerun_with_pipeline,
    resend,
)
from web.pages import flash, redirect, render
from web.worker_status import worker_status

router = APIRouter(
    tags=["console: jobs"], dependencies=[Depends(verify_csrf)], include_in_schema=False
)
STATES = [s.value for s in JobState]
StateFilter = Annotated[str, Query(max_length=16)]
PipelineFilter = Annotated[str, Query(max_length=64)]


def _filters(state: str, pipeline: str) -> dict[str, str]:
    if state and state not in STATES:
        raise HTTPException(400, f"state must be one of {', '.join(STATES)}")
    return {"state": state, "pipeline": pipeline}


def _back(filters: dict[str, str]) -> Response:
    query = urlencode({k: v for k, v in filters.items() if v})
    return redirect("/jobs" + (f"?{query}" if query else ""))


def _pipeline_names(state: StateDep, session: SessionDep) -> list[str]:
    try:
        return sorted(pipeline_configs(state.settings, session))
    except ConfigError:  # a broken definition must not take the queue page down
        return []


@router.get("/jobs")
def jobs_page(
    request: Request,
    session: SessionDep,
    state: StateDep,
    user: Reviewer,
    job_state: Annotated[str, Query(alias="state", max_length=16)] = "",
    pipeline: PipelineFilter = "",
) -> Response:
    filters = _filters(job_state, pipeline)
    context: dict[str, Any] = {
        "rows": job_list.queue(session, state=filters["state"], pipeline=filters["pipeline"]),
        "filters": filters,
        "states": STATES,
        "counts": job_list.state_counts(session),
        "pipelines": sorted(
            set(job_list.pipelines_seen(session)) | set(_pipeline_names(state, session))
        ),
        "runnable": _pipeline_names(state, session),
        "failed_deliveries": len(job_list.failed_delivery_ids(session)),
        "rows_url": "/jobs/rows?" + urlencode(filters),
        "export_query": urlencode({k: v for k, v in filters.items() if v}),
        "workers": worker_status(state.settings, session, state.clock()),
    }
    return render(request, "jobs.html", context, user=user)


@router.get("/jobs/rows")
def jobs_rows(
    request: Request,
    session: SessionDep,
    state: StateDep,
    user: Reviewer,
    job_state: Annotated[str, Query(alias="state", max_length=16)] = "",
    pipeline: PipelineFilter = "",
) -> Response:
    """The table body alone: what the page's script swaps in on each poll."""
    filters = _filters(job_state, pipeline)
    context = {
        "rows": job_list.queue(session, state=filters["state"], pipeline=filters["pipeline"]),
        "filters": filters,
        "runnable": _pipeline_names(state, session),
    }
    response = render(request, "jobs_rows.html", context, user=user)
    counts = job_list.state_counts(session)  # the page's count cards follow the rows
    figures = [f"{s}={counts.get(s, 0)}" for s in STATES]
    figures.append(f"awaiting={worklist.awaiting_review(session)}")  # the nav badge
    response.headers["X-Live-Counts"] = ",".join(figures)
    return response


@router.post("/jobs/{job_id}/retry")
def retry(
    request: Request,
    session: SessionDep,
    user: Reviewer,
    job_id: RowId,
    back_state: Annotated[str, Form(max_length=16)] = "",
    back_pipeline: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    if not requeue_job(session, job_id, user.username):
        raise HTTPException(409, f"job {job_id} is not finished (or does not exist)")
    flash(request, f"Job {job_id} is queued again.")
    return _back(_filters(back_state, back_pipeline))


@router.post("/jobs/{job_id}/cancel")
def cancel(
    request: Request,
    session: SessionDep,
    user: Reviewer,
    job_id: RowId,
    back_state: Annotated[str, Form(max_length=16)] = "",
    back_pipeline: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    if not cancel_job(session, job_id, user.username):
        raise HTTPException(409, f"job {job_id} is not queued (a worker may have taken it)")
    flash(request, f"Job {job_id} was cancelled.")
    return _back(_filters(back_state, back_pipeline))


@router.post("/jobs/{job_id}/rerun-with")
def rerun_with(
    request: Request,
    session: SessionDep,
    state: StateDep,
    user: Reviewer,
    job_id: RowId,
    pipeline: Annotated[str, Form(min_length=1, max_length=64)],
    back_state: Annotated[str, Form(max_length=16)] = "",
    back_pipeline: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    try:
        configs = pipeline_configs(state.settings, session)
    except ConfigError as exc:
        raise HTTPException(409, f"pipeline definitions cannot be read: {exc}") from exc
    cfg = configs.get(pipeline)
    if cfg is None:
        raise HTTPException(404, f"No pipeline {pipeline!r}")
    try:
        job = rerun_with_pipeline(
            session, job_id, cfg.name, cfg.version, cfg.review_required, user.username
        )
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from exc
    flash(request, f"Job {job.id} runs the study again with {cfg.name}.")
    return _back(_filters(back_state, back_pipeline))


@router.post("/deliveries/resend-failed")
def resend_failed(request: Request, session: SessionDep, user: Reviewer) -> Response:
    """Every FAILED delivery gets fresh attempts, due now (each one audited by ``resend``)."""
    ids = job_list.failed_delivery_ids(session)
    for delivery_id in ids:
        resend(session, delivery_id, user.username)
    audit.record(
        session,
        "delivery.resend_all",
        entity_type="delivery",
        actor=user.username,
        detail=f"{len(ids)} failed deliveries due again",
    )
    flash(request, f"{len(ids)} failed deliver{'y is' if len(ids) == 1 else 'ies are'} due again.")
    return redirect("/jobs")
