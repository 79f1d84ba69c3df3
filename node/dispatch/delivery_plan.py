"""Which objects go where, and the review gate: deliveries are planned, held, released, resent.

Rejection (cancelling and withdrawing) is :mod:`node.dispatch.rejection`.

The worker calls :func:`plan_deliveries` in the job's final transaction, so a job that succeeded
always has its deliveries (no window where results exist but nothing is due). Every state change
here is audited in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from core.config import DestinationSettings, Settings
from core.domain import ArtifactKind, DeliveryState, DestinationKind, JobState, ReviewState
from node.db.orm import Artifact, Delivery, Job, utcnow
from node.db.repositories import config_overrides
from node.db.repositories import deliveries as repo

SOURCE_DESTINATION_PREFIX = "orthanc-source-"


def plan_deliveries(
    session: Session,
    job: Job,
    destinations: Sequence[str],
    *,
    held: bool,
    settings: Settings | None = None,
    artifacts: Sequence[Artifact] | None = None,
    actor: str = "system",
) -> list[Delivery]:
    """One delivery per (artifact of ``job``, destination): HELD when ``held`` else PENDING.

    Idempotent: a (artifact, destination) pair that already has a delivery keeps it, so calling
    this again (a retried final transaction) never duplicates a send. When ``settings`` is given
    and the study came from an Orthanc source with ``upload_results``, that Orthanc is added to the
    destinations. ``artifacts`` limits the plan to some of the job's objects (the console's
    "send to" plans only validated results). Returns the job's deliveries to the given
    destinations, in dispatch order."""
    names = list(dict.fromkeys(destinations))
    if settings is not None:
        # the destinations as the console has them now (an Orthanc destination added there
        # receives the results it sent), read in the job's own transaction
        settings = config_overrides.effective_settings(session, settings)
        back = source_return_destination(settings, job.study.source, job.study.peer_host)
        if back and back not in names:
            names.append(back)
    chosen = job.artifacts if artifacts is None else artifacts
    ordered = sorted(chosen, key=lambda a: ArtifactKind(a.kind).dispatch_rank)
    existing = {
        (d.artifact_pk, d.destination_name)
        for d in repo.for_artifacts(session, [a.id for a in ordered])
    }
    state = DeliveryState.HELD if held else DeliveryState.PENDING
    now = utcnow()
    for artifact in ordered:
        for name in names:
            if (artifact.id, name) in existing:
                continue
            delivery = Delivery(
                artifact_pk=artifact.id,
                destination_name=name,
                state=state.value,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
            session.add(delivery)
            session.flush()
            repo.transition(
                session,
                delivery,
                state,
                action="delivery.planned",
                actor=actor,
                detail=f"{artifact.kind} {artifact.sop_instance_uid} -> {name}",
            )
            delivery.artifact = artifact
    session.flush()
    return [d for d in repo.for_job(session, job.id) if d.destination_name in names]


def release_held(session: Session, job: Job, actor: str) -> int:
    """Review approved: HELD deliveries become due now. Returns how many were released."""
    now = utcnow()
    held = repo.for_job(session, job.id, [DeliveryState.HELD])
    for delivery in held:
        delivery.next_attempt_at = now
        repo.transition(
            session, delivery, DeliveryState.PENDING, action="delivery.released", actor=actor
        )
    return len(held)


def resend(session: Session, delivery_id: int, actor: str) -> None:
    """Console "resend": a FAILED delivery gets a fresh set of attempts, due now.

    Raises ``LookupError`` for an unknown id and ``ValueError`` for a delivery that is not FAILED
    (a held one needs approval, a cancelled one was rejected by a reviewer), and for a result of a
    rejected job (only its rejection notes may be sent again)."""
    delivery = repo.get(session, delivery_id)
    if delivery is None:
        raise LookupError(f"no delivery {delivery_id}")
    if delivery.state != DeliveryState.FAILED.value:
        raise ValueError(
            f"delivery {delivery_id} is {delivery.state}; only a failed delivery can be resent"
        )
    job = repo.job_of(session, delivery)
    if (
        job.review_state == ReviewState.REJECTED.value
        and ArtifactKind(delivery.artifact.kind).is_result
    ):
        raise ValueError(f"job {job.id} was rejected; its results cannot be resent")
    _due_again(session, delivery, "delivery.resent", actor)


def _due_again(session: Session, delivery: Delivery, action: str, actor: str) -> None:
    """A fresh set of attempts, due now (resend, and "send to" a destination that had it)."""
    delivery.attempts = 0
    delivery.next_attempt_at = utcnow()
    delivery.lease_owner = ""
    delivery.lease_expires_at = None
    repo.transition(session, delivery, DeliveryState.PENDING, action=action, actor=actor)


def send_results(session: Session, job: Job, destination: str, actor: str) -> int:
    """Console "send to": the job's validated results go to ``destination``, due now.

    The rules the automatic path keeps hold here too: only a succeeded job has results, a job
    awaiting review is sent by approving it (its gate is not bypassed by hand), and a rejected
    job's results never leave. Raises ``ValueError`` naming which rule refused. Objects that
    already reached the destination (or failed to) are sent again; ones still on their way are
    left alone. The caller checks that ``destination`` is configured and enabled. Returns how
    many deliveries became due."""
    if job.state != JobState.SUCCEEDED.value:
        raise ValueError(f"job {job.id} is {job.state}; it has no results to send")
    if job.review_state == ReviewState.REJECTED.value:
        raise ValueError(f"job {job.id} was rejected; its results cannot be sent")
    if job.review_state == ReviewState.PENDING.value:
        raise ValueError(
            f"job {job.id} awaits review; approve it on its review page to send its results"
        )
    results = [a for a in job.artifacts if a.validated and ArtifactKind(a.kind).is_result]
    if not results:
        raise ValueError(f"job {job.id} has no validated results to send")
    before = {
        d.artifact_pk: d
        for d in repo.for_artifacts(session, [a.id for a in results])
        if d.destination_name == destination
    }
    plan_deliveries(session, job, [destination], held=False, artifacts=results, actor=actor)
    again = [
        d
        for d in before.values()
        if d.state in (DeliveryState.DELIVERED.value, DeliveryState.FAILED.value)
    ]
    for delivery in again:
        _due_again(session, delivery, "delivery.sent_again", actor)
    return len(results) - len(before) + len(again)


# -- destinations ------------------------------------------------------------------------------
def _same_url(a: str, b: str) -> bool:
    pa, pb = urlsplit(a.rstrip("/")), urlsplit(b.rstrip("/"))
    return (pa.scheme, pa.hostname, pa.port, pa.path) == (pb.scheme, pb.hostname, pb.port, pb.path)


def resolve_sender_destination(settings: Settings, calling_ae: str, peer_host: str) -> str | None:
    """The configured destination that is the sender of a study ("send back to sender").

    A DICOM destination matches on AE title (a host match wins among several); for a study pulled
    from Orthanc ``peer_host`` is the Orthanc URL, matched against ORTHANC destinations."""
    dicom = [
        d
        for d in settings.destinations
        if d.enabled and d.kind is DestinationKind.DICOM and calling_ae and d.ae_title == calling_ae
    ]
    if dicom:
        on_host = [d for d in dicom if d.host == peer_host]
        return (on_host or dicom)[0].name
    if peer_host.startswith(("http://", "https://")):
        for dest in settings.destinations:
            if (
                dest.enabled
                and dest.kind is DestinationKind.ORTHANC
                and _same_url(dest.url, peer_host)
            ):
                return dest.name
        for index, orthanc in enumerate(settings.orthanc_sources):
            if orthanc.upload_results and _same_url(orthanc.url, peer_host):
                return f"{SOURCE_DESTINATION_PREFIX}{index + 1}"  # implicit: the source itself
    return None


def source_return_destination(settings: Settings, source: str, peer_host: str) -> str | None:
    """For a study pulled from an Orthanc source with ``upload_results``: where results go back."""
    wanted = any(s.upload_results and _same_url(s.url, peer_host) for s in settings.orthanc_sources)
    if source != "orthanc" or not wanted:
        return None
    return resolve_sender_destination(settings, "", peer_host)


def destination_settings(settings: Settings, name: str) -> DestinationSettings | None:
    """A configured destination, or the implicit one for an Orthanc source's results.

    ``settings`` are the effective ones (the console's destinations merged by
    ``node.overrides``), so a destination added or edited in the console resolves here."""
    for dest in settings.destinations:
        if dest.name == name:
            return dest
    if name.startswith(SOURCE_DESTINATION_PREFIX):
        suffix = name.removeprefix(SOURCE_DESTINATION_PREFIX)
        if suffix.isdigit() and 1 <= int(suffix) <= len(settings.orthanc_sources):
            source = settings.orthanc_sources[int(suffix) - 1]
            return DestinationSettings(
                name=name,
                kind=DestinationKind.ORTHANC,
                url=source.url,
                username=source.username,
                password=source.password,
            )
    return None
