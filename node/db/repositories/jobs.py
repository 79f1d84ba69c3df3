"""Jobs as the console shows them: one job with its study, artifacts and deliveries; job lists;
review decisions."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from node.db.orm import Artifact, Job, Review


def get_job(session: Session, job_id: int) -> Job | None:
    return session.scalars(
        select(Job)
        .where(Job.id == job_id)
        .options(
            selectinload(Job.study),
            selectinload(Job.artifacts).selectinload(Artifact.deliveries),
        )
    ).first()


def get_artifact(session: Session, artifact_id: int) -> Artifact | None:
    return session.get(Artifact, artifact_id)


def list_jobs(
    session: Session, *, state: str = "", limit: int = 100, offset: int = 0
) -> Sequence[Job]:
    stmt = select(Job).options(selectinload(Job.study)).order_by(Job.id.desc())
    if state:
        stmt = stmt.where(Job.state == state)
    return session.scalars(stmt.limit(min(max(limit, 1), 500)).offset(max(offset, 0))).all()


def job_reviews(session: Session, job_id: int) -> Sequence[Review]:
    """A job's review history, oldest first, with each reviewer loaded (the page names them)."""
    stmt = (
        select(Review)
        .where(Review.job_pk == job_id)
        .options(selectinload(Review.user))
        .order_by(Review.id)
    )
    return session.scalars(stmt).all()


def add_review(
    session: Session, job: Job, user_id: int | None, decision: str, reason: str = ""
) -> Review:
    review = Review(job_pk=job.id, user_pk=user_id, decision=decision, reason=reason[:4000])
    session.add(review)
    return review
