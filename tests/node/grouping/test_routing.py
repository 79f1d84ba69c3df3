"""Routing rules are data: which rule matched, which pipelines and destinations, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from core.config import Settings, load_settings
from core.domain import SeriesFacts, StudyFacts, StudyState
from node.grouping.routing import explain_routes


@dataclass(frozen=True)
class Selection:
    modalities: tuple[str, ...]

    def matches(self, series: SeriesFacts) -> bool:
        return series.modality in self.modalities


@dataclass(frozen=True)
class Pipe:
    selection: Selection
    enabled: bool = True
    version: str = "1.0"
    review_required: bool = False
    extra: dict[str, str] = field(default_factory=dict)


PIPES = {"demo-2d": Pipe(Selection(("CR", "DX", "MG"))), "demo-3d": Pipe(Selection(("CT", "MR")))}
DESTS = [
    {"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
    {"name": "ct-scanner", "kind": "dicom", "ae_title": "CT1", "host": "127.0.0.1", "port": 105},
]


def study(*series: SeriesFacts, calling: str = "CT1", description: str = "") -> StudyFacts:
    return StudyFacts(
        "1.2",
        StudyState.COMPLETE,
        datetime.now(UTC),
        tuple(series),
        study_description=description,
        calling_ae=calling,
        called_ae="PACSNODE",
    )


CT = SeriesFacts("1.2.1", modality="CT", body_part_examined="CHEST", series_description="Lung 1mm")
SR = SeriesFacts("1.2.2", modality="SR")
CR = SeriesFacts("1.2.3", modality="CR", body_part_examined="CHEST")


def make(routing: list[dict[str, object]] | None = None) -> Settings:
    return load_settings(None, destinations=DESTS, routing=routing or [])


def test_without_rules_pipelines_select_by_their_own_series_selection() -> None:
    decision = explain_routes(make(), PIPES, study(CT, SR))
    assert decision.pipelines == ("demo-3d",)
    assert decision.destinations == ("pacs", "ct-scanner")
    assert explain_routes(make(), PIPES, study(CR)).pipelines == ("demo-2d",)
    assert explain_routes(make(), PIPES, study(SR)).pipelines == ()


def test_disabled_pipeline_is_not_chosen() -> None:
    pipes = {**PIPES, "demo-3d": Pipe(Selection(("CT",)), enabled=False)}
    assert explain_routes(make(), pipes, study(CT)).pipelines == ()


def test_first_matching_rule_wins_and_explains_itself() -> None:
    settings = make(
        [
            {
                "name": "mammo",
                "when": {"modality": ["MG"]},
                "pipelines": ["demo-2d"],
                "destinations": ["pacs"],
            },
            {
                "name": "chest-ct",
                "when": {
                    "modality": ["CT"],
                    "body_part_examined": ["chest"],
                    "calling_ae": ["CT1"],
                },
                "pipelines": ["demo-3d"],
                "destinations": ["pacs"],
            },
            {"name": "catch-all", "pipelines": ["demo-2d"], "destinations": ["pacs"]},
        ]
    )
    decision = explain_routes(settings, PIPES, study(CT))
    assert decision.pipelines == ("demo-3d",)
    assert [v.rule for v in decision.verdicts] == ["mammo", "chest-ct"]
    assert not decision.verdicts[0].matched and decision.verdicts[1].matched
    text = decision.explain()
    assert "MATCH chest-ct" in text and "BodyPartExamined 'CHEST'" in text


def test_series_conditions_must_hold_for_the_same_series() -> None:
    settings = make(
        [
            {
                "name": "ct-lung",
                "when": {"modality": ["CT"], "series_description_regex": "lung"},
                "pipelines": ["demo-3d"],
            }
        ]
    )
    other = SeriesFacts("1.2.9", modality="MR", series_description="Lung MR")
    assert explain_routes(settings, PIPES, study(other, SR)).pipelines == ()
    assert explain_routes(settings, PIPES, study(CT)).pipelines == ("demo-3d",)


def test_calling_ae_and_study_description_conditions() -> None:
    settings = make(
        [
            {
                "name": "from-ct1",
                "when": {"calling_ae": ["CT1"], "study_description_regex": "^thorax"},
                "pipelines": ["demo-3d"],
            }
        ]
    )
    assert explain_routes(settings, PIPES, study(CT, description="Thorax w/o")).pipelines == (
        "demo-3d",
    )
    miss = explain_routes(settings, PIPES, study(CT, calling="MR7", description="Thorax"))
    assert miss.pipelines == () and "calling AE 'MR7' not in" in miss.explain()


def test_non_stop_rules_accumulate_and_send_back_to_sender() -> None:
    settings = make(
        [
            {"name": "all", "pipelines": ["demo-3d"], "destinations": ["pacs"], "stop": False},
            {
                "name": "back",
                "when": {"modality": ["CT"]},
                "pipelines": ["demo-3d"],
                "send_back_to_sender": True,
            },
        ]
    )
    decision = explain_routes(settings, PIPES, study(CT, calling="CT1"))
    assert decision.pipelines == ("demo-3d",)
    assert decision.destinations == ("pacs", "ct-scanner")
    unknown_sender = explain_routes(settings, PIPES, study(CT, calling="XA9"))
    assert unknown_sender.destinations == ("pacs",)
    assert "no destination configured for AE 'XA9'" in unknown_sender.explain()
