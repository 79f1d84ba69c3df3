"""Orthanc as a source: pull an announced study's instances into the same persist path as C-STORE.

An announcement (the plugin's hook, or a STABLE_STUDY entry in Orthanc's ``/changes``) first becomes
an :class:`OrthancPull` row: that row is the durable acknowledgement. Pulls are then worked off with
a lease, retried with backoff, and deleted only once every instance is persisted and the study's
completion is requested, so a crash or an unreachable Orthanc never loses an announced study.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Collection
from datetime import datetime, timedelta

from orthanc_api_client import exceptions as orthanc_errors
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.config import OrthancSourceSettings, Settings
from core.domain import Association
from node.db.engine import Database
from node.db.orm import Artifact, OrthancPull, SourceCursor, utcnow
from node.db.repositories import audit
from node.dispatch.orthanc_rest import orthanc_client
from node.grouping.completion import force_complete
from node.ingest.persist import persist_instance
from node.ingest.uid_gate import instance_uid_error, record_refusal

log = logging.getLogger(__name__)

PULL_LEASE_S = 600.0
PULL_BACKOFF_BASE_S = 5.0
PULL_BACKOFF_MAX_S = 600.0
CHANGES_PAGE = 200


class PullError(RuntimeError):
    """A study could not be pulled completely (Orthanc unreachable, an instance refused)."""


def cursor_key(source: OrthancSourceSettings) -> str:
    return f"orthanc:{source.url.rstrip('/')}"


def source_for_url(settings: Settings, url: str | None) -> OrthancSourceSettings | None:
    """The configured source with this URL; else (no URL, or a URL the Orthanc knows itself by,
    e.g. a container name) the only configured source."""
    sources = settings.orthanc_sources
    if url:
        wanted = url.rstrip("/")
        match = next((s for s in sources if s.url.rstrip("/") == wanted), None)
        if match is not None:
            return match
    return sources[0] if len(sources) == 1 else None


# -- the durable queue of announced studies ----------------------------------------------------
def enqueue_pull(
    session: Session, source: OrthancSourceSettings, orthanc_study_id: str, via: str
) -> int:
    """Record that a study must be pulled (idempotent: a repeat makes it due now). Returns its id."""
    url = source.url.rstrip("/")
    pull = session.scalars(
        select(OrthancPull).where(
            OrthancPull.source_url == url, OrthancPull.orthanc_study_id == orthanc_study_id
        )
    ).one_or_none()
    if pull is None:
        pull = OrthancPull(
            source_url=url, orthanc_study_id=orthanc_study_id, next_attempt_at=utcnow()
        )
        session.add(pull)
        session.flush()
        audit.record(session, "orthanc.pull_queued", entity_type="orthanc_study", entity_id=orthanc_study_id,
                     to_state="queued", detail=f"{via} from {url}")  # fmt: skip
    elif pull.lease_expires_at is None:
        pull.next_attempt_at = utcnow()
    return pull.id


def _claim_pulls(
    db: Database, now: datetime, only: Collection[int] | None
) -> list[tuple[int, str, str]]:
    with db.write() as session:
        stmt = select(OrthancPull).where(
            OrthancPull.next_attempt_at <= now,
            or_(OrthancPull.lease_expires_at.is_(None), OrthancPull.lease_expires_at < now),
        )
        if only is not None:
            stmt = stmt.where(OrthancPull.id.in_(list(only)))
        rows = session.scalars(
            stmt.order_by(OrthancPull.id).limit(32).with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            row.attempts += 1
            row.lease_expires_at = now + timedelta(seconds=PULL_LEASE_S)
        return [(r.id, r.source_url, r.orthanc_study_id) for r in rows]


def process_pending_pulls(
    settings: Settings, db: Database, only: Collection[int] | None = None
) -> int:
    """Pull every due announced study (or just ``only``); return how many were pulled."""
    pulled = 0
    for pull_id, url, orthanc_study_id in _claim_pulls(db, utcnow(), only):
        source = source_for_url(settings, url)
        try:
            if source is None:
                raise PullError(f"no orthanc_sources entry for {url} any more")
            study_uid = pull_study(settings, db, source, orthanc_study_id)
        except (PullError, orthanc_errors.OrthancApiException) as exc:
            _pull_failed(db, pull_id, str(exc))
            continue
        with db.write() as session:
            pull = session.get(OrthancPull, pull_id)
            if pull is not None:
                session.delete(pull)
            audit.record(session, "orthanc.pulled", entity_type="study", entity_id=study_uid,
                         detail=f"Orthanc study {orthanc_study_id} from {url}")  # fmt: skip
        pulled += 1
    return pulled


def _pull_failed(db: Database, pull_id: int, error: str) -> None:
    with db.write() as session:
        pull = session.get(OrthancPull, pull_id)
        if pull is None:
            return
        delay = min(PULL_BACKOFF_MAX_S, PULL_BACKOFF_BASE_S * 2 ** max(0, pull.attempts - 1))
        delay *= 1 + random.uniform(-0.2, 0.2)
        pull.lease_expires_at = None
        pull.next_attempt_at = utcnow() + timedelta(seconds=delay)
        pull.last_error = error[:4000]
        audit.record(session, "orthanc.pull_failed", entity_type="orthanc_study", entity_id=pull.orthanc_study_id,
                     detail=f"attempt {pull.attempts}: {error}; next in {delay:.0f}s")  # fmt: skip
    log.warning("pulling Orthanc study failed (attempt will be retried): %s", error)


# -- pulling one study ---------------------------------------------------------------------------
def pull_study(
    settings: Settings, db: Database, source: OrthancSourceSettings, orthanc_study_id: str
) -> str:
    """Persist every instance of an Orthanc study, request its completion; return its StudyInstanceUID.

    Instances already held are duplicates to the persist path (no second copy); an instance whose
    identifying UIDs are not plain UIDs is refused (logged, audited) and skipped. Raises
    :class:`PullError` when Orthanc does not know the study or an instance cannot be stored."""
    client = orthanc_client(source.url, source.username, source.password)
    try:
        study = client.get_json(f"studies/{orthanc_study_id}", timeout=settings.dispatch.timeout_s)
        system = client.get_json("system", timeout=settings.dispatch.timeout_s)
    except orthanc_errors.ResourceNotFound as exc:
        raise PullError(f"Orthanc has no study {orthanc_study_id}") from exc
    study_uid = str(study.get("MainDicomTags", {}).get("StudyInstanceUID", ""))
    assoc = Association(
        calling_ae=str(system.get("DicomAet", ""))[:16],
        called_ae=settings.ae_title,
        peer_host=source.url.rstrip("/"),
        source="orthanc",
    )
    listing = client.get_json(
        f"studies/{orthanc_study_id}/instances", timeout=settings.dispatch.timeout_s
    )
    if not listing:
        raise PullError(f"Orthanc study {orthanc_study_id} holds no instances")
    own = _own_results(
        db, [str(i.get("MainDicomTags", {}).get("SOPInstanceUID", "")) for i in listing]
    )
    refused = 0
    for item in listing:
        if item.get("MainDicomTags", {}).get("SOPInstanceUID", "") in own:
            continue  # our own uploaded results coming back: not an input
        raw = client.get_binary(f"instances/{item['ID']}/file", timeout=settings.dispatch.timeout_s)
        uid_error = instance_uid_error(raw)
        if uid_error is not None:  # refused for good (a retry would fetch the same bytes)
            refused += 1
            record_refusal(db, uid_error, origin=f"Orthanc instance {item['ID']} from {assoc.peer_host}",
                           source="orthanc")  # fmt: skip
            continue
        outcome = persist_instance(db, settings, raw, assoc)
        if not outcome.ok:
            raise PullError(
                f"instance {item['ID']} not stored: {outcome.status.name} {outcome.reason}"
            )
        study_uid = study_uid or outcome.study_instance_uid
    if len(own) + refused == len(listing):
        return study_uid  # only our results changed in Orthanc, or all refused: nothing to process
    with db.write() as session:
        request_completion(session, study_uid, f"orthanc stable study {orthanc_study_id}", utcnow())
    return study_uid


def _own_results(db: Database, sop_instance_uids: list[str]) -> set[str]:
    """The UIDs among these that the node produced itself (uploaded results seen again)."""
    with db.read() as session:
        found = session.scalars(
            select(Artifact.sop_instance_uid).where(
                Artifact.sop_instance_uid.in_(sop_instance_uids)
            )
        ).all()
    return set(found)


def request_completion(session: Session, study_uid: str, reason: str, now: datetime) -> bool:
    """Orthanc said the study is stable: complete it now instead of waiting for the quiet period."""
    return force_complete(session, study_uid, reason, now)


# -- polling fallback ----------------------------------------------------------------------------
def poll_changes(settings: Settings, db: Database) -> int:
    """Follow each polled source's ``/changes`` from the stored cursor, queue its stable studies,
    then work off every due pull (hook-announced ones whose pull failed included).

    A source seen for the first time starts at Orthanc's current last change: the node does not
    import the whole history of an existing Orthanc. Returns the number of studies pulled."""
    for source in settings.orthanc_sources:
        if source.poll:
            try:
                _follow_changes(db, source)
            except orthanc_errors.OrthancApiException as exc:
                log.warning("polling %s failed: %s", source.url, exc)
    return process_pending_pulls(settings, db)


def _follow_changes(db: Database, source: OrthancSourceSettings) -> None:
    client = orthanc_client(source.url, source.username, source.password)
    key = cursor_key(source)
    with db.read() as session:
        cursor = session.get(SourceCursor, key)
        position = cursor.position if cursor is not None else None
    if position is None:
        last = int(client.get_json("changes?last")["Last"])
        with db.write() as session:
            session.merge(SourceCursor(source=key, position=last, updated_at=utcnow()))
        return
    done = False
    while not done:
        page = client.get_json(f"changes?since={position}&limit={CHANGES_PAGE}")
        done = bool(page.get("Done", True))
        stable = [c["ID"] for c in page.get("Changes", []) if c.get("ChangeType") == "StableStudy"]
        new_position = int(page.get("Last", position))
        with db.write() as session:  # queue and move the cursor in one transaction: nothing skipped
            for orthanc_study_id in dict.fromkeys(stable):
                enqueue_pull(session, source, orthanc_study_id, via="changes")
            row = session.get(SourceCursor, key)
            if row is None:
                session.add(SourceCursor(source=key, position=new_position, updated_at=utcnow()))
            else:
                row.position, row.updated_at = new_position, utcnow()
        if new_position == position:
            break
        position = new_position


def pending_pulls(session: Session) -> list[OrthancPull]:
    """Announced studies not pulled yet (the console shows them; a test asserts none is lost)."""
    return list(session.scalars(select(OrthancPull).order_by(OrthancPull.id)).all())


__all__ = [
    "PullError",
    "enqueue_pull",
    "pending_pulls",
    "poll_changes",
    "process_pending_pulls",
    "pull_study",
    "request_completion",
    "source_for_url",
]
