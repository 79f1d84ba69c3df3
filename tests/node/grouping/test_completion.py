"""Completion rules as pure functions of (facts, now): no sleeping, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.config import CompletionSettings, ExpectedSeriesRule
from core.domain import SeriesFacts, StudyFacts, StudyState
from node.grouping.completion import decide_completion

T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def facts(
    *series: SeriesFacts, state: StudyState = StudyState.RECEIVING, forced: bool = False
) -> StudyFacts:
    return StudyFacts("1.2.3", state, T0, tuple(series), complete_requested=forced)


CT = SeriesFacts("1.2.3.1", modality="CT", series_description="Axial 1mm", instance_count=100)
SCOUT = SeriesFacts("1.2.3.2", modality="CT", series_description="Scout", instance_count=2)
QUIET = CompletionSettings(quiet_period_s=10)


def test_not_complete_during_quiet_period_and_says_how_long_to_wait() -> None:
    decision = decide_completion(facts(CT), T0 + timedelta(seconds=4), QUIET)
    assert not decision.complete
    assert abs(decision.wait_s - 6.0) < 1e-9


def test_complete_once_quiet_period_elapsed() -> None:
    decision = decide_completion(facts(CT), T0 + timedelta(seconds=10), QUIET)
    assert decision.complete and "quiet" in decision.reason


def test_expected_series_rule_completes_before_quiet_period() -> None:
    rule = ExpectedSeriesRule(name="ct-two-series", modality=["CT"], min_series=2)
    assert not decide_completion(facts(CT), T0, QUIET, [rule]).complete
    decision = decide_completion(facts(CT, SCOUT), T0, QUIET, [rule])
    assert decision.complete and "ct-two-series" in decision.reason


def test_expected_series_rule_checks_description_and_instance_count() -> None:
    rule = ExpectedSeriesRule(
        name="axial", modality=["CT"], series_description_regex="axial", min_instances_per_series=50
    )
    assert decide_completion(facts(CT), T0, QUIET, [rule]).complete
    thin = SeriesFacts("1.2.3.1", modality="CT", series_description="Axial", instance_count=10)
    assert not decide_completion(facts(thin), T0, QUIET, [rule]).complete


def test_rule_for_another_modality_leaves_quiet_period_in_charge() -> None:
    rule = ExpectedSeriesRule(name="mr", modality=["MR"], min_series=1)
    assert not decide_completion(facts(CT), T0 + timedelta(seconds=1), QUIET, [rule]).complete


def test_forced_completion_is_immediate() -> None:
    decision = decide_completion(facts(CT, forced=True), T0, QUIET)
    assert decision.complete and decision.reason == "forced"


def test_complete_or_processed_studies_are_never_completed_again() -> None:
    for state in (StudyState.COMPLETE, StudyState.PROCESSED):
        later = T0 + timedelta(hours=1)
        assert not decide_completion(facts(CT, state=state), later, QUIET).complete


def test_zero_quiet_period_completes_at_once() -> None:
    assert decide_completion(facts(CT), T0, CompletionSettings(quiet_period_s=0)).complete
