"""Routing rules as data: which pipelines and destinations a complete study gets, and why.

Rules are evaluated in order; a matching rule with ``stop: true`` (the default) ends the search.
Series-level conditions (Modality, SOP Class, BodyPartExamined, SeriesDescription) must all hold
for one and the same series; study-level ones (StudyDescription, calling and called AE) for the
study. With no rules configured, a study goes to every enabled pipeline whose own series
selection matches one of its series, and to every enabled destination — what a newcomer expects
from ``make run``. Every decision carries its explanation for ``pacsnode route`` and the console.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from core.config import RoutingCondition, RoutingRule, Settings
from core.domain import SeriesFacts, StudyFacts


class _Selection(Protocol):
    def matches(self, series: SeriesFacts) -> bool: ...


class PipelineLike(Protocol):
    """What routing needs of a pipeline definition (pipelines.spec.PipelineConfig)."""

    @property
    def enabled(self) -> bool: ...

    @property
    def selection(self) -> _Selection: ...


@dataclass(frozen=True)
class RuleVerdict:
    rule: str
    matched: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RouteDecision:
    pipelines: tuple[str, ...]
    destinations: tuple[str, ...]
    verdicts: tuple[RuleVerdict, ...]

    def explain(self) -> str:
        lines = [
            f"{'MATCH' if v.matched else 'no   '} {v.rule}: {'; '.join(v.reasons)}"
            for v in self.verdicts
        ]
        lines.append(f"=> pipelines: {', '.join(self.pipelines) or '(none)'}")
        lines.append(f"=> destinations: {', '.join(self.destinations) or '(none)'}")
        return "\n".join(lines)


def _in(value: str, allowed: list[str]) -> bool:
    return value.upper() in {a.upper() for a in allowed}


def _series_reasons(cond: RoutingCondition, series: SeriesFacts) -> list[str] | None:
    """Reasons the series satisfies every series-level condition, or None when one fails."""
    reasons: list[str] = []
    checks: list[tuple[list[str], str, str]] = [
        (cond.modality, series.modality, "Modality"),
        (cond.sop_class_uid, series.sop_class_uid, "SOPClassUID"),
        (cond.body_part_examined, series.body_part_examined, "BodyPartExamined"),
    ]
    for allowed, value, name in checks:
        if allowed:
            if not _in(value, allowed):
                return None
            reasons.append(f"{name} {value!r} in {allowed}")
    if cond.series_description_regex:
        if not re.search(cond.series_description_regex, series.series_description, re.I):
            return None
        reasons.append(
            f"SeriesDescription {series.series_description!r} ~ /{cond.series_description_regex}/"
        )
    return reasons


def rule_verdict(rule: RoutingRule, facts: StudyFacts) -> RuleVerdict:
    cond = rule.when
    reasons: list[str] = []
    study_checks: list[tuple[list[str], str, str]] = [
        (cond.calling_ae, facts.calling_ae, "calling AE"),
        (cond.called_ae, facts.called_ae, "called AE"),
    ]
    for allowed, value, name in study_checks:
        if allowed:
            if not _in(value, allowed):
                return RuleVerdict(rule.name, False, (f"{name} {value!r} not in {allowed}",))
            reasons.append(f"{name} {value!r} in {allowed}")
    if cond.study_description_regex:
        if not re.search(cond.study_description_regex, facts.study_description, re.I):
            return RuleVerdict(
                rule.name,
                False,
                (
                    f"StudyDescription {facts.study_description!r} !~ /{cond.study_description_regex}/",
                ),
            )
        reasons.append(f"StudyDescription ~ /{cond.study_description_regex}/")
    series_level = (
        cond.modality
        or cond.sop_class_uid
        or cond.body_part_examined
        or cond.series_description_regex
    )
    if series_level:
        for series in facts.series:
            series_reasons = _series_reasons(cond, series)
            if series_reasons is not None:
                reasons += [f"series {series.series_instance_uid}: " + ", ".join(series_reasons)]
                break
        else:
            return RuleVerdict(rule.name, False, ("no series satisfies the series conditions",))
    return RuleVerdict(rule.name, True, tuple(reasons) or ("no conditions (matches every study)",))


def sender_destination(settings: Settings, calling_ae: str, peer_host: str = "") -> str | None:
    """The configured DICOM destination for the AE that sent the study ("send back to sender")."""
    candidates = [
        d for d in settings.destinations if d.enabled and d.ae_title and d.ae_title == calling_ae
    ]
    for dest in candidates:
        if peer_host and dest.host == peer_host:
            return dest.name
    return candidates[0].name if candidates else None


def explain_routes(
    settings: Settings, pipelines: Mapping[str, PipelineLike], facts: StudyFacts
) -> RouteDecision:
    enabled_dests = tuple(d.name for d in settings.destinations if d.enabled)
    if not settings.routing:
        chosen = tuple(
            name
            for name, cfg in pipelines.items()
            if cfg.enabled and any(cfg.selection.matches(s) for s in facts.series)
        )
        verdict = RuleVerdict(
            "(default: pipeline series selection)",
            bool(chosen),
            (f"pipelines whose selection matches a series: {list(chosen)}",),
        )
        return RouteDecision(chosen, enabled_dests if chosen else (), (verdict,))

    pipes: list[str] = []
    dests: list[str] = []
    verdicts: list[RuleVerdict] = []
    for rule in settings.routing:
        verdict = rule_verdict(rule, facts)
        verdicts.append(verdict)
        if not verdict.matched:
            continue
        unknown = [p for p in rule.pipelines if p not in pipelines]
        disabled = [p for p in rule.pipelines if p in pipelines and not pipelines[p].enabled]
        if unknown or disabled:
            verdicts[-1] = RuleVerdict(
                rule.name,
                True,
                verdict.reasons
                + tuple(f"pipeline {p!r} unknown, skipped" for p in unknown)
                + tuple(f"pipeline {p!r} disabled, skipped" for p in disabled),
            )
        pipes += [p for p in rule.pipelines if p in pipelines and pipelines[p].enabled]
        dests += [d for d in rule.destinations if d in enabled_dests]
        if rule.send_back_to_sender:
            back = sender_destination(settings, facts.calling_ae, facts.peer_host)
            if back:
                dests.append(back)
            else:
                verdicts[-1] = RuleVerdict(
                    rule.name,
                    True,
                    verdicts[-1].reasons
                    + (f"send back: no destination configured for AE {facts.calling_ae!r}",),
                )
        if rule.stop:
            break
    return RouteDecision(tuple(dict.fromkeys(pipes)), tuple(dict.fromkeys(dests)), tuple(verdicts))
