"""The review page (source frames, mask overlay, heat map, explanation map, boxes, findings) and the
review actions; the page's images (frame PNGs under a window, masks, maps) are served by
:mod:`web.routes.review_images`. Next/previous study follow the review worklist's order under the
filters the reviewer came with (carried in the query string).

Approving releases the job's held deliveries. Rejecting cancels every delivery not yet sent and,
for results a destination already stored, queues an IHE IOCM rejection note to it; the page says
which before the button is pressed and after. Decisions, like comments, re-runs and resends, are
recorded as a Review row (naming the reviewer) and/or an audit event in the same transaction.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from core.domain import ReviewState
from node.db.orm import Job
from node.db.repositories import audit, worklist
from node.db.repositories import deliveries as delivery_repo
from node.db.repositories import jobs as job_repo
from node.dispatch.rejection import RejectionPreview
from pipelines.preprocess.display import WINDOW_PRESETS
from web.deps import Reader, Reviewer, RowId, SessionDep, StateDep, verify_csrf
from web.enhancement_views import denoised_files, denoiser_quality
from web.integrations import (
    preview_rejection,
    reject_results,
    release_held,
    requeue_job,
    resend,
)
from web.pages import flash, redirect, render
from web.result_views import (
    anomaly_map,
    explanation,
    finding_views,
    heatmap,
    result_frame_keys,
    review_data,
    review_result,
)
from web.review_frames import job_or_404, seg_masks, source_frames
from web.routes.worklist import WorklistQuery

router = APIRouter(
    tags=["console: review"], dependencies=[Depends(verify_csrf)], include_in_schema=False
)


def _boxes_by_frame(data: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    boxes: dict[int, list[dict[str, Any]]] = {}
    for box in data.get("detections") or []:
        if isinstance(box, dict) and "frame_index" in box:
            boxes.setdefault(int(box["frame_index"]), []).append(box)
    return boxes


def _worklist_query(flt: worklist.WorklistFilter, sort: str) -> str:
    """The worklist filters (and sort) a reviewer came with, to carry on every review link."""
    query = {k: v for k, v in vars(flt).items() if v}
    if sort != "newest":
        query["sort"] = sort
    return urlencode(query)


WorklistSortQuery = Annotated[worklist.WorklistSort, Query()]


@router.get("/review/{job_id}")
def review_page(
    request: Request,
    session: SessionDep,
    state: StateDep,
    user: Reader,
    job_id: RowId,
    flt: WorklistQuery,
    sort: WorklistSortQuery = "newest",
) -> Response:
    job = job_or_404(session, job_id)
    loaded = review_result(state.settings, job)
    data = loaded[1] if loaded else review_data(state.settings, job)
    frames = source_frames(session, job, data)
    masks = seg_masks(state, job, frames)
    frame_index = {(f.sop_instance_uid, f.frame): i for i, f in enumerate(frames)}
    result_keys = result_frame_keys(data.get("source_frames") or [])
    boxes: list[dict[str, Any]] = []
    for idx, items in _boxes_by_frame(data).items():
        if 0 <= idx < len(result_keys):
            shown = frame_index.get(result_keys[idx])
            if shown is not None:
                boxes += [{**b, "shown_frame": shown} for b in items]
    mask_frames = [
        i
        for i, f in enumerate(frames)
        if masks is not None and (f.sop_instance_uid, f.frame) in masks.frames
    ]
    findings = finding_views(loaded[0], frame_index) if loaded else []
    try:
        has_heatmap = loaded is not None and heatmap(state.settings, job) is not None
    except FileNotFoundError:
        has_heatmap = False
    try:
        has_explanation = loaded is not None and explanation(state.settings, job) is not None
    except FileNotFoundError:
        has_explanation = False
    try:
        has_anomaly_map = loaded is not None and anomaly_map(state.settings, job) is not None
    except FileNotFoundError:
        has_anomaly_map = False
    enhancement = data.get("enhancement") if loaded else None
    start = mask_frames[0] if mask_frames else (boxes[0]["shown_frame"] if boxes else 0)
    keyed = [f for f in findings if f.key_frame is not None]
    if keyed:
        start = keyed[0].key_frame  # type: ignore[assignment]
    previous_job, next_job = worklist.neighbours(session, flt, job.id, sort=sort)
    return render(
        request,
        "review.html",
        {
            "job": job,
            "study": job.study,
            "data": data,
            "frames": frames,
            "start": start,
            "has_mask": masks is not None,
            "has_heatmap": has_heatmap,
            "has_explanation": has_explanation,
            "explanation_title": _explanation_title(data),
            "has_anomaly_map": has_anomaly_map,
            "anomaly_title": _anomaly_title(data),
            "denoiser_quality": (
                denoiser_quality(state.settings, enhancement["members"]) if enhancement else []
            ),
            "has_denoised": bool(denoised_files(state.settings, job)),
            "mask_frames": mask_frames,
            "boxes": boxes,
            "findings": findings,
            "window_presets": WINDOW_PRESETS,
            "previous_job": previous_job,
            "next_job": next_job,
            "worklist_query": _worklist_query(flt, sort),
            "reviews": job_repo.job_reviews(session, job.id),
            "decisions": _decisions(job),
            "rejection": _rejection_preview(session, job),
            "segment_labels": masks.segment_labels if masks else {},
        },
        user=user,
    )


def _explanation_title(data: dict[str, Any]) -> str:
    """ "Grad-CAM for abnormal" for the toggle's tooltip; "" without an explanation."""
    info = data.get("explanation")
    if not isinstance(info, dict):
        return ""
    names = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "occlusion": "occlusion sensitivity"}
    return f"{names.get(str(info.get('method')), info.get('method'))} for {info.get('class_name')}"


def _anomaly_title(data: dict[str, Any]) -> str:
    """What the anomaly map's colours mean, for the toggle's tooltip; "" without an anomaly."""
    info = data.get("anomaly")
    if not isinstance(info, dict):
        return ""
    return f"anomaly map: red at or above the threshold {float(info['threshold']):.3g}"


# -- actions ----------------------------------------------------------------------------------

# review states from which a decision changes something: approving releases held deliveries;
# rejecting cancels unsent ones and withdraws delivered ones (also after an approval)
DECIDABLE_FROM = {
    ReviewState.APPROVED: (ReviewState.PENDING.value,),
    ReviewState.REJECTED: (
        ReviewState.PENDING.value,
        ReviewState.NOT_REQUIRED.value,
        ReviewState.APPROVED.value,
    ),
}


def _decisions(job: Job) -> list[str]:
    """The decisions the page offers for this job: only those that would change something."""
    if job.state != "succeeded":
        return []
    return [d.value for d, allowed in DECIDABLE_FROM.items() if job.review_state in allowed]


def _rejection_preview(session: Session, job: Job) -> RejectionPreview | None:
    if ReviewState.REJECTED.value not in _decisions(job):
        return None
    return preview_rejection(session, job)


def _decide(session: Session, job: Job, user: Reviewer, decision: ReviewState, reason: str) -> None:
    if job.state != "succeeded":
        raise HTTPException(409, f"the job is {job.state}; only finished results can be reviewed")
    if job.review_state not in DECIDABLE_FROM[decision]:
        raise HTTPException(
            409, f"this result is {job.review_state}; {decision.value} would change nothing"
        )
    before = job.review_state
    job.review_state = decision.value
    job_repo.add_review(session, job, user.user_id, decision.value, reason)
    audit.record(
        session,
        f"review.{decision.value}",
        entity_type="job",
        entity_id=job.id,
        actor=user.username,
        from_state=before,
        to_state=decision.value,
        detail=reason,
    )


def _back_to_review(job_id: int, flt: worklist.WorklistFilter, sort: str) -> Response:
    query = _worklist_query(flt, sort)
    return redirect(f"/review/{job_id}" + (f"?{query}" if query else ""))


@router.post("/review/{job_id}/approve")
def approve(
    request: Request,
    session: SessionDep,
    user: Reviewer,
    job_id: RowId,
    flt: WorklistQuery,
    sort: WorklistSortQuery = "newest",
) -> Response:
    job = job_or_404(session, job_id)
    _decide(session, job, user, ReviewState.APPROVED, "")
    released = release_held(session, job, user.username)
    flash(request, f"Approved; {released} held delivery(ies) released.")
    return _back_to_review(job_id, flt, sort)


@router.post("/review/{job_id}/reject")
def reject(
    request: Request,
    session: SessionDep,
    state: StateDep,
    user: Reviewer,
    job_id: RowId,
    flt: WorklistQuery,
    reason: Annotated[str, Form(max_length=2000)] = "",
    sort: WorklistSortQuery = "newest",
) -> Response:
    if not reason.strip():
        raise HTTPException(400, "A rejection needs a reason.")
    job = job_or_404(session, job_id)
    _decide(session, job, user, ReviewState.REJECTED, reason.strip())
    outcome = reject_results(session, state.settings, job, user.username, reason.strip())
    message = f"Rejected; {outcome.cancelled} unsent delivery(ies) cancelled."
    if outcome.notes:
        sent_to = ", ".join(f"{dest} ({n} objects)" for dest, n in outcome.notes.items())
        message += f" Results had already reached {sent_to}: a rejection note is being sent there."
    flash(request, message)
    return _back_to_review(job_id, flt, sort)


@router.post("/review/{job_id}/comment")
def comment(
    request: Request,
    session: SessionDep,
    user: Reviewer,
    job_id: RowId,
    text: Annotated[str, Form(min_length=1, max_length=4000)],
) -> Response:
    job = job_or_404(session, job_id)
    job_repo.add_review(session, job, user.user_id, "comment", text.strip())
    audit.record(
        session,
        "review.comment",
        entity_type="job",
        entity_id=job.id,
        actor=user.username,
        detail=text.strip(),
    )
    flash(request, "Comment saved.")
    return redirect(f"/review/{job_id}")


@router.post("/jobs/{job_id}/rerun")
def rerun(request: Request, session: SessionDep, user: Reviewer, job_id: RowId) -> Response:
    job = job_or_404(session, job_id)
    queued = requeue_job(session, job.id, user.username)
    if not queued:
        raise HTTPException(409, f"the job is {job.state}; only a finished job can be re-run")
    flash(request, "The job was queued again.")
    return redirect(f"/studies/{job.study.study_instance_uid}")


@router.post("/deliveries/{delivery_id}/resend")
def resend_delivery(
    request: Request, session: SessionDep, user: Reviewer, delivery_id: RowId
) -> Response:
    delivery = delivery_repo.get(session, delivery_id)
    if delivery is None:
        raise HTTPException(404, f"No delivery {delivery_id}")
    study_uid = delivery.artifact.job.study.study_instance_uid
    try:
        resend(session, delivery_id, user.username)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from exc
    flash(request, f"Delivery {delivery_id} is due again.")
    return redirect(f"/studies/{study_uid}")
