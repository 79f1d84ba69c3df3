"""``POST /api/hooks/orthanc``: Orthanc's Python plugin announces a stable study.

The caller is checked first (an API token with the ``hooks`` scope, or the shared secret); the
handler then only writes the durable :class:`OrthancPull` row, then
answers 202; the pull itself runs on a background thread. If that pull fails (or the process dies),
the row stays and the scheduler's ``poll_changes`` retries it, so an acknowledged study is not lost.
"""

from __future__ import annotations

import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Request, status
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from core.config import Settings
from node.db.engine import Database
from node.db.orm import OrthancPull, utcnow
from node.ingest.orthanc_source import enqueue_pull, process_pending_pulls, source_for_url
from web.deps import (
    TOKEN_SCOPE_ATTR,
    StateDep,
    current_user,
    optional_user,
    require_scope,
)

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Pacsnode-Hook-Secret"
HOOKS_SCOPE = "hooks"
BACKGROUND_TRIES = 4
BACKGROUND_MAX_WAIT_S = 60.0
router = APIRouter(prefix="/api/hooks", tags=["hooks"])
_pullers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="orthanc-pull")


class OrthancStudyAnnouncement(BaseModel):
    study_id: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-fA-F-]+$")  # Orthanc ID
    orthanc_url: str | None = Field(
        default=None, max_length=255
    )  # which source; default: the only one


class HookAccepted(BaseModel):
    queued: bool
    pull_id: int


def _pull_in_background(settings: Settings, db: Database, pull_id: int) -> None:
    """Pull now; while the pull fails, retry on its backoff schedule a few times in this thread.
    After that (or after a restart) the row waits for the scheduler's ``poll_changes``."""
    for _ in range(BACKGROUND_TRIES):
        try:
            process_pending_pulls(settings, db, only=[pull_id])
            with db.read() as session:
                pull = session.get(OrthancPull, pull_id)
                due = pull.next_attempt_at if pull is not None else None
        except SQLAlchemyError:
            log.exception("background pull %s failed; the polling fallback will retry it", pull_id)
            return
        if due is None:
            return
        time.sleep(min(BACKGROUND_MAX_WAIT_S, max(0.0, (due - utcnow()).total_seconds())))


def hook_caller(
    request: Request, state: StateDep, secret: Annotated[str, Header(alias=SECRET_HEADER)] = ""
) -> None:
    """The caller is Orthanc: an API token with the ``hooks`` scope (a console session or a token
    without it gets 403), or, without a token, the shared ``hook_secret`` header."""
    if request.headers.get("authorization"):
        require_scope(HOOKS_SCOPE)(current_user(optional_user(request)))
        return
    if not state.settings.hook_secret:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "hook disabled: set hook_secret or send an API token with the 'hooks' scope",
        )
    if not hmac.compare_digest(secret.encode(), state.settings.hook_secret.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"wrong or missing {SECRET_HEADER}")


setattr(hook_caller, TOKEN_SCOPE_ATTR, HOOKS_SCOPE)


@router.post(
    "/orthanc",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=HookAccepted,
    dependencies=[Depends(hook_caller)],
    openapi_extra={"security": [{"bearerToken": [HOOKS_SCOPE]}, {"hookSecret": []}]},
)
def orthanc_stable_study(body: OrthancStudyAnnouncement, state: StateDep) -> HookAccepted:
    settings = state.settings
    source = source_for_url(settings, body.orthanc_url)
    if source is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            "unknown Orthanc source: configure orthanc_sources (and send orthanc_url when several)",
        )
    with state.db.write() as session:
        pull_id = enqueue_pull(session, source, body.study_id, via="hook")
    _pullers.submit(_pull_in_background, settings, state.db, pull_id)
    return HookAccepted(queued=True, pull_id=pull_id)
