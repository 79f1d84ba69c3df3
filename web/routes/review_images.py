"""The review page's images: source frames under a window, their denoised copies, the SEG's masks
and the per-frame colour maps (heat map, explanation, anomaly map), one PNG per shown frame.

Window/level is the server's: each frame PNG is rendered under the ``window`` query parameter by
the one windowing implementation (:mod:`pipelines.preprocess.display`); the viewer
(``web/static/review.js``) only zooms and pans. A frame's index is its place among the frames the
review page shows (:func:`web.review_frames.source_frames`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response
from sqlalchemy.orm import Session

from core.config import Settings
from node.db.orm import Job
from pipelines.preprocess.display import WindowChoice, parse_window
from web.deps import Reader, RowId, SessionDep, StateDep, verify_csrf
from web.enhancement_views import denoised_files
from web.imaging import RenderError, render_frame, render_heatmap_png, render_mask_png
from web.result_views import (
    anomaly_map,
    data_file,
    explanation,
    heatmap,
    result_frame_keys,
    review_data,
)
from web.review_frames import FrameRef, job_or_404, seg_masks, source_frames

router = APIRouter(
    tags=["console: review"], dependencies=[Depends(verify_csrf)], include_in_schema=False
)
PNG_HEADERS = {"Cache-Control": "private, max-age=300"}


def _frames_or_404(
    session: Session, state: StateDep, job: Job, index: int
) -> tuple[list[FrameRef], FrameRef]:
    """The frames the review page shows, and the ``index``-th of them."""
    frames = source_frames(session, job, review_data(state.settings, job))
    if not 0 <= index < len(frames):
        raise HTTPException(404, f"frame {index} out of range (0-{len(frames) - 1})")
    return frames, frames[index]


def _window(window: Annotated[str, Query(max_length=40)] = "file") -> WindowChoice:
    """The ``window`` query parameter: file, auto, lung, soft, bone, or center,width (400 else)."""
    try:
        return parse_window(window)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc


@router.get("/review/{job_id}/frames/{index}.png")
def frame_png(
    session: SessionDep,
    state: StateDep,
    user: Reader,
    job_id: RowId,
    index: int,
    window: Annotated[WindowChoice, Depends(_window)],
) -> Response:
    """One source frame under ``window``; the window applied (centre,width in modality units)
    comes back in ``X-Window`` for the viewer to start a window/level drag from."""
    _, ref = _frames_or_404(session, state, job_or_404(session, job_id), index)
    try:
        path = data_file(state.settings, ref.path)
    except FileNotFoundError as exc:
        raise HTTPException(422, f"cannot render this frame: {exc}") from exc
    return _frame_response(path, ref.frame, window)


def _frame_response(path: Path, frame: int, window: WindowChoice) -> Response:
    """A frame PNG with the window applied in ``X-Window``; 422 when it cannot be shown."""
    try:
        png, applied = render_frame(path, frame, window)
    except (RenderError, FileNotFoundError) as exc:
        raise HTTPException(422, f"cannot render this frame: {exc}") from exc
    headers = dict(PNG_HEADERS)
    if applied is not None:
        headers["X-Window"] = applied.text()
    return Response(png, media_type="image/png", headers=headers)


@router.get("/review/{job_id}/denoised/{index}.png")
def denoised_png(
    session: SessionDep,
    state: StateDep,
    user: Reader,
    job_id: RowId,
    index: int,
    window: Annotated[WindowChoice, Depends(_window)],
) -> Response:
    """One shown frame's denoised copy (the enhancement's derived instance) under ``window``,
    like :func:`frame_png`; 404 when the job made no denoised copy of that frame's image."""
    job = job_or_404(session, job_id)
    _, ref = _frames_or_404(session, state, job, index)
    path = denoised_files(state.settings, job).get(ref.sop_instance_uid)
    if path is None:
        raise HTTPException(404, "this job made no denoised copy of this image")
    return _frame_response(path, ref.frame, window)


MapLoader = Callable[[Settings, Job], np.ndarray | None]


def _map_png(
    session: SessionDep, state: StateDep, job_id: int, index: int, load: MapLoader, missing: str
) -> Response:
    """One shown frame of one of the job's per-frame maps as a colour PNG; 404 with ``missing``
    when the pipeline made no such map (one route shape for heat map, explanation, anomaly)."""
    job = job_or_404(session, job_id)
    frames, ref = _frames_or_404(session, state, job, index)
    try:
        values = load(state.settings, job)
    except FileNotFoundError as exc:
        raise HTTPException(404, "this job's result is not on disk") from exc
    if values is None:
        raise HTTPException(404, missing)
    return _colour_map_png(state, job, ref, values)


@router.get("/review/{job_id}/anomaly/{index}.png")
def anomaly_png(
    session: SessionDep, state: StateDep, user: Reader, job_id: RowId, index: int
) -> Response:
    """The anomaly map for one shown frame in the heat map's colours, scaled as the overlay
    series shows it (red: at or above the calibrated threshold); 404 when there is none."""
    return _map_png(
        session, state, job_id, index, anomaly_map, "this job's pipeline made no anomaly map"
    )


@router.get("/review/{job_id}/heatmap/{index}.png")
def heatmap_png(
    session: SessionDep, state: StateDep, user: Reader, job_id: RowId, index: int
) -> Response:
    """The ensemble's probability for one shown frame as a colour map (transparent where the
    probability is negligible); a frame outside the result's frames is fully transparent."""
    return _map_png(
        session, state, job_id, index, heatmap, "this job's pipeline produced no probabilities"
    )


@router.get("/review/{job_id}/explanation/{index}.png")
def explanation_png(
    session: SessionDep, state: StateDep, user: Reader, job_id: RowId, index: int
) -> Response:
    """The classification's explanation (Grad-CAM & co., 0..1) for one shown frame, in the heat
    map's colours; 404 when the pipeline made no explanation."""
    return _map_png(
        session, state, job_id, index, explanation, "this job's pipeline made no explanation"
    )


def _colour_map_png(state: StateDep, job: Job, ref: FrameRef, heat: np.ndarray) -> Response:
    """One shown frame of a (result frames, rows, cols) uint8 map as the heat map's RGBA PNG;
    fully transparent for a frame the result does not cover."""
    keys = result_frame_keys(review_data(state.settings, job).get("source_frames") or [])
    plane = None
    key = (ref.sop_instance_uid, ref.frame)
    if key in keys and keys.index(key) < heat.shape[0]:
        plane = heat[keys.index(key)]
    png = render_heatmap_png(plane, (int(heat.shape[1]), int(heat.shape[2])))
    return Response(png, media_type="image/png", headers=PNG_HEADERS)


@router.get("/review/{job_id}/masks/{index}.png")
def mask_png(
    session: SessionDep, state: StateDep, user: Reader, job_id: RowId, index: int
) -> Response:
    job = job_or_404(session, job_id)
    frames, ref = _frames_or_404(session, state, job, index)
    masks = seg_masks(state, job, frames)
    if masks is None:
        raise HTTPException(404, "this job has no segmentation")
    plane = masks.frames.get((ref.sop_instance_uid, ref.frame))
    png = render_mask_png(plane, (masks.rows, masks.columns), max(masks.segment_labels, default=1))
    return Response(png, media_type="image/png", headers=PNG_HEADERS)
