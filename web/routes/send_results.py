"""The study page's "send to": one job's validated results to a destination the admin chooses.

For radiologists and admins, as *Resend* is. The destination must be configured (with the
console's edits) and enabled, else 400; the job's rules (succeeded, not rejected, not awaiting
review) are ``node.dispatch.delivery_plan.send_results``'s, a refusal answering 409 with its
reason. The deliveries are planned by the same code as the worker's, so the dispatcher sends
them like any other; the send is audited as ``delivery.sent_manually`` (each delivery's state
change is audited too).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import Response

from node.db.orm import Job
from node.db.repositories import audit
from web.deps import Reviewer, RowId, SessionDep, StateDep, verify_csrf
from web.integrations import effective_settings, send_results
from web.pages import flash, redirect

router = APIRouter(
    tags=["console: deliveries"], dependencies=[Depends(verify_csrf)], include_in_schema=False
)


@router.post("/jobs/{job_id}/send")
def send_to_destination(
    request: Request,
    session: SessionDep,
    state: StateDep,
    user: Reviewer,
    job_id: RowId,
    destination: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"No job {job_id}")
    settings = effective_settings(session, state.settings)
    dest = next((d for d in settings.destinations if d.name == destination), None)
    if dest is None:
        raise HTTPException(400, f"No destination {destination!r} is configured")
    if not dest.enabled:
        raise HTTPException(400, f"Destination {destination!r} is switched off")
    try:
        due = send_results(session, job, dest.name, user.username)
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from exc
    audit.record(
        session,
        "delivery.sent_manually",
        entity_type="job",
        entity_id=job.id,
        actor=user.username,
        detail=f"{due} object(s) -> {dest.name}",
    )
    flash(
        request,
        f"{due} result object(s) of job {job.id} are due to {dest.name}."
        if due
        else f"Job {job.id}'s results are already on their way to {dest.name}.",
    )
    return redirect(f"/studies/{job.study.study_instance_uid}")
