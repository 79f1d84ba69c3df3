"""Turning a complete study into jobs: one per (study, pipeline, result version).

Called by the completion sweep inside its transaction, so the study's state change, its jobs and
their audit rows commit together; the unique constraint on (study, pipeline, result version)
makes a repeated call harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import Settings
from core.domain import StudyState
from node.db.orm import Job, Study
from node.db.repositories import audit, studies
from node.grouping.routing import PipelineLike, RouteDecision, explain_routes
from node.jobs.queue import add_queued_job

log = logging.getLogger(__name__)


class PlannablePipeline(PipelineLike, Protocol):
    @property
    def version(self) -> str: ...

    @property
    def review_required(self) -> bool: ...


@dataclass
class JobPlanner:
    """Holds what job creation needs (settings and pipeline definitions), built once per process."""

    settings: Settings
    pipelines: Mapping[str, PlannablePipeline]

    def route(self, session: Session, study_uid: str) -> RouteDecision | None:
        facts = studies.study_facts(session, study_uid)
        return None if facts is None else explain_routes(self.settings, self.pipelines, facts)

    def complete_study(self, session: Session, study_uid: str, reason: str, now: datetime) -> None:
        study = studies.get_study(session, study_uid)
        if study is None or study.state != StudyState.RECEIVING.value:
            return
        decision = self.route(session, study_uid)
        assert decision is not None
        study.state = StudyState.COMPLETE.value
        study.completed_at = now
        study.completion_reason = reason[:64]
        study.complete_requested = False
        audit.record(
            session,
            "study.completed",
            entity_type="study",
            entity_id=study_uid,
            from_state=StudyState.RECEIVING.value,
            to_state=StudyState.COMPLETE.value,
            detail=f"{reason}\n{decision.explain()}",
        )
        created = 0
        for name in decision.pipelines:
            exists = session.scalar(
                select(Job.id).where(
                    Job.study_pk == study.id,
                    Job.pipeline_name == name,
                    Job.result_version == study.result_version,
                )
            )
            if exists is not None:
                continue
            cfg = self.pipelines[name]
            add_queued_job(
                session,
                study_pk=study.id,
                pipeline_name=name,
                pipeline_version=cfg.version,
                result_version=study.result_version,
                destinations=decision.destinations,
                review_required=cfg.review_required,
                max_attempts=self.settings.jobs.max_attempts,
                now=now,
                detail=f"study {study_uid} pipeline {name} v{cfg.version} result v{study.result_version}",
            )
            created += 1
        if created == 0 and not decision.pipelines:
            skip_study(session, study, decision)


def skip_study(session: Session, study: Study, decision: RouteDecision) -> None:
    """No pipeline matches: the study ends SKIPPED with the reason on it, in the audit and log."""
    study.state = StudyState.SKIPPED.value
    study.outcome = no_match_reason(study)[:255]
    log.info("study %s skipped: %s", study.study_instance_uid, study.outcome)
    audit.record(
        session,
        "study.skipped",
        entity_type="study",
        entity_id=study.study_instance_uid,
        from_state=StudyState.COMPLETE.value,
        to_state=StudyState.SKIPPED.value,
        detail=f"{study.outcome}\n{decision.explain()}",
    )


def no_match_reason(study: Study) -> str:
    """ "no pipeline matches (modality NM)": what a person needs to see first."""
    modalities = sorted({s.modality for s in study.series if s.modality})
    return f"no pipeline matches (modality {', '.join(modalities) or 'unknown'})"
