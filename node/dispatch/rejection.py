"""Rejecting a job's results: stop what is unsent, withdraw what was delivered.

A reviewer's Reject must mean it whether or not the review gate held the results. Every delivery
not yet at its destination (held, pending, retrying, in flight, failed) is cancelled, and every
destination that already stored results gets an IHE IOCM Rejection Note (a KOS, made by
:mod:`node.results.rejection`) referencing exactly the objects it received, delivered through the
normal dispatcher as an artifact of kind ``rejection_note``. A send that was in flight when the
job was rejected and then succeeded is recorded by the dispatcher, which calls
:func:`plan_rejection_notes` again so that object is withdrawn too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import Settings
from core.domain import ArtifactKind, DeliveryState, ReviewState
from node.db.orm import Artifact, Delivery, Job, Review, utcnow
from node.db.repositories import deliveries as repo
from node.results.rejection import (
    build_rejection_note,
    encode_rejection_note,
    referenced_uids,
    rejection_note_uid,
)


@dataclass(frozen=True)
class RejectionPreview:
    """What Reject would do now: shown beside the button before anyone presses it."""

    unsent: int = 0
    delivered: dict[str, int] = field(default_factory=dict)  # destination -> objects stored there


@dataclass(frozen=True)
class RejectionOutcome:
    cancelled: int
    notes: dict[str, int]  # destination -> objects its new rejection note withdraws


def _resolve(settings: Settings, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else settings.data_dir / p


def _result_deliveries(
    session: Session, job: Job, states: Sequence[DeliveryState]
) -> list[Delivery]:
    return [
        d for d in repo.for_job(session, job.id, states) if ArtifactKind(d.artifact.kind).is_result
    ]


def preview_rejection(session: Session, job: Job) -> RejectionPreview:
    unsent = [s for s in DeliveryState if s.unsent]
    delivered: dict[str, int] = defaultdict(int)
    for d in _result_deliveries(session, job, [DeliveryState.DELIVERED]):
        delivered[d.destination_name] += 1
    return RejectionPreview(len(_result_deliveries(session, job, unsent)), dict(delivered))


def reject_job(
    session: Session, settings: Settings, job: Job, actor: str, reason: str
) -> RejectionOutcome:
    """Cancel every unsent result delivery of ``job`` and plan rejection notes for what was sent.

    The caller has already set the job's review state to rejected (same transaction)."""
    unsent = _result_deliveries(session, job, [s for s in DeliveryState if s.unsent])
    for delivery in unsent:
        delivery.last_error = f"review rejected: {reason}"[:2000]
        delivery.lease_owner = ""
        delivery.lease_expires_at = None
        repo.transition(
            session,
            delivery,
            DeliveryState.CANCELLED,
            action="delivery.cancelled",
            actor=actor,
            detail=reason,
        )
    return RejectionOutcome(len(unsent), plan_rejection_notes(session, settings, job, actor))


def _covered(session: Session, settings: Settings, job: Job) -> dict[str, set[str]]:
    """Per destination, the SOP Instance UIDs a (not cancelled) rejection note already covers."""
    covered: dict[str, set[str]] = defaultdict(set)
    for delivery in repo.for_job(session, job.id):
        artifact = delivery.artifact
        if ArtifactKind(artifact.kind).is_result or delivery.state == "cancelled":
            continue
        note = pydicom.dcmread(_resolve(settings, artifact.path))
        covered[delivery.destination_name] |= referenced_uids(note)
    return covered


def _reason(session: Session, job: Job) -> str:
    review = session.scalar(
        select(Review)
        .where(Review.job_pk == job.id, Review.decision == ReviewState.REJECTED.value)
        .order_by(Review.id.desc())
        .limit(1)
    )
    return review.reason if review is not None else ""


def _note_artifact(
    session: Session, settings: Settings, job: Job, rejected: list[Artifact]
) -> Artifact:
    """The note artifact withdrawing ``rejected`` (existing when another destination got the same
    objects), its file written and validated beside the job's other results."""
    uid = rejection_note_uid([a.sop_instance_uid for a in rejected])
    existing = session.scalar(select(Artifact).where(Artifact.sop_instance_uid == uid))
    if existing is not None:
        return existing
    headers: list[Dataset] = [
        pydicom.dcmread(_resolve(settings, a.path), stop_before_pixels=True) for a in rejected
    ]
    note = build_rejection_note(headers, _reason(session, job))
    data = encode_rejection_note(note, [a.sop_instance_uid for a in rejected])
    rel = Path(rejected[0].path).parent / f"rejection_note-{uid[-12:]}.dcm"
    target = _resolve(settings, str(rel))
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    artifact = Artifact(
        job_pk=job.id,
        kind=ArtifactKind.REJECTION_NOTE.value,
        sop_class_uid=str(note.SOPClassUID),
        sop_instance_uid=uid,
        series_instance_uid=str(note.SeriesInstanceUID),
        path=str(rel),
        size_bytes=len(data),
        validated=True,
    )
    session.add(artifact)
    session.flush()
    return artifact


def plan_rejection_notes(
    session: Session, settings: Settings, job: Job, actor: str = "system"
) -> dict[str, int]:
    """For each destination holding delivered results of ``job`` not yet withdrawn by a note,
    a PENDING delivery of a note referencing exactly those objects. Returns destination -> count.
    Idempotent: objects already covered for a destination are left out."""
    covered = _covered(session, settings, job)
    delivered: dict[str, list[Artifact]] = defaultdict(list)
    for d in _result_deliveries(session, job, [DeliveryState.DELIVERED]):
        if d.artifact.sop_instance_uid not in covered[d.destination_name]:
            delivered[d.destination_name].append(d.artifact)
    planned: dict[str, int] = {}
    now = utcnow()
    for destination, artifacts in sorted(delivered.items()):
        note = _note_artifact(session, settings, job, artifacts)
        if any(d.destination_name == destination for d in repo.for_artifacts(session, [note.id])):
            continue
        delivery = Delivery(
            artifact_pk=note.id,
            destination_name=destination,
            state=DeliveryState.PENDING.value,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        session.add(delivery)
        session.flush()
        repo.transition(
            session,
            delivery,
            DeliveryState.PENDING,
            action="delivery.planned",
            actor=actor,
            detail=f"rejection note {note.sop_instance_uid} ({len(artifacts)} objects) -> {destination}",
        )
        planned[destination] = len(artifacts)
    return planned
