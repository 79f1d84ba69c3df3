"""When is a study complete? Pure functions of (study facts, rules, now), plus the sweep that applies them.

DICOM has no "end of study" message, so, like mercure and Orthanc's StableAge, a study is complete
after a quiet period with no new instance, as soon as an expected-series rule is satisfied, or when
an operator forces it. The decision functions take ``now`` as an argument, so every rule is
unit-tested without sleeping; :func:`sweep` is the only part that touches the database.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from core.config import CompletionSettings, ExpectedSeriesRule
from core.domain import StudyFacts, StudyState
from node.db.repositories import audit, studies

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletionDecision:
    complete: bool
    reason: str
    wait_s: float = 0.0  # when not complete: seconds until the quiet period ends


def expected_series_met(facts: StudyFacts, rule: ExpectedSeriesRule) -> bool:
    """True when at least ``rule.min_series`` series match the rule's conditions."""
    wanted = {m.upper() for m in rule.modality}
    pattern = (
        re.compile(rule.series_description_regex, re.I) if rule.series_description_regex else None
    )
    matching = [
        s
        for s in facts.series
        if (not wanted or s.modality.upper() in wanted)
        and (pattern is None or pattern.search(s.series_description))
        and s.instance_count >= rule.min_instances_per_series
    ]
    return len(matching) >= rule.min_series


def rule_applies(facts: StudyFacts, rule: ExpectedSeriesRule) -> bool:
    """A rule only speaks for studies that hold its modality (else the quiet period decides)."""
    wanted = {m.upper() for m in rule.modality}
    return not wanted or any(s.modality.upper() in wanted for s in facts.series)


def decide_completion(
    facts: StudyFacts,
    now: datetime,
    settings: CompletionSettings,
    rules: Sequence[ExpectedSeriesRule] = (),
) -> CompletionDecision:
    if facts.state is not StudyState.RECEIVING:
        return CompletionDecision(False, f"study is {facts.state.value}")
    if facts.complete_requested:
        return CompletionDecision(True, "forced")
    for rule in rules:
        if rule_applies(facts, rule) and expected_series_met(facts, rule):
            return CompletionDecision(True, f"expected-series rule {rule.name!r} met")
    idle = (now - facts.last_received_at).total_seconds()
    if idle >= settings.quiet_period_s:
        return CompletionDecision(
            True, f"quiet for {idle:.1f} s (>= {settings.quiet_period_s:g} s)"
        )
    return CompletionDecision(False, "receiving", wait_s=settings.quiet_period_s - idle)


# --- database side ------------------------------------------------------------------------------

OnComplete = Callable[[Session, str, str, datetime], None]


def sweep(
    session: Session,
    now: datetime,
    settings: CompletionSettings,
    rules: Sequence[ExpectedSeriesRule],
    on_complete: OnComplete,
) -> list[str]:
    """Complete every receiving study whose rule fires; return their UIDs.

    ``on_complete(session, study_uid, reason, now)`` creates the jobs (node.jobs.creation); it runs
    in the same transaction as the state change, so a crash leaves either both or neither.
    """
    completed: list[str] = []
    for facts in studies.receiving_study_facts(session):
        decision = decide_completion(facts, now, settings, rules)
        if decision.complete:
            on_complete(session, facts.study_instance_uid, decision.reason, now)
            completed.append(facts.study_instance_uid)
    return completed


def force_complete(session: Session, study_uid: str, reason: str, now: datetime) -> bool:
    """Ask for a study to be completed now (CLI, API, Orthanc hook); False for an unknown UID.

    Only the request is written here: the next completion sweep (every
    ``completion.sweep_interval_s``) creates the jobs with the routing it owns, so this works from
    any process — the CLI against a running node included.
    """
    study = studies.get_study(session, study_uid)
    if study is None:
        return False
    if study.state != StudyState.RECEIVING.value:
        # already complete or processed: reprocessing is an explicit re-run, not a completion
        return True
    study.complete_requested = True
    audit.record(
        session, "study.complete_requested", entity_type="study", entity_id=study_uid, detail=reason
    )
    return True
