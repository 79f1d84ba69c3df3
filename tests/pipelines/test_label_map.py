"""Members that name or order their labels differently: refused, unless the pipeline maps them.

Copies of the tiny real models get cards with other label names or another label order; the real
model registry loads them, and the ensembles are checked against the bare members' outputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from models.registry import ModelRegistry
from pipelines.contract import StudyInput
from pipelines.errors import PipelineModelError
from pipelines.pipeline import Pipeline
from tests.pipelines.test_pipeline import config


def _relabelled(src: Path, dst_dir: Path, name: str, names_by_value: dict[int, str]) -> None:
    """A copy of the model ``src`` (same weights) whose card gives label ``value`` another name."""
    folder = dst_dir / name
    shutil.copytree(src, folder)
    card = yaml.safe_load((folder / "card.yaml").read_text())
    card["name"] = name
    for label in card["labels"]:
        label["name"] = names_by_value.get(label["value"], label["name"])
    (folder / "card.yaml").write_text(yaml.safe_dump(card))


@pytest.fixture(scope="module")
def registry(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    folder = tmp_path_factory.mktemp("relabelled")
    for model in ("tiny-cls-resnet", "tiny-det-yolo"):
        shutil.copytree(tiny_models_dir / model, folder / model)
    # the same classifier, its two outputs named the other way round
    _relabelled(
        tiny_models_dir / "tiny-cls-resnet", folder, "cls-swapped", {1: "abnormal", 2: "normal"}
    )
    _relabelled(
        tiny_models_dir / "tiny-cls-resnet", folder, "cls-renamed", {1: "healthy", 2: "lesion"}
    )
    _relabelled(tiny_models_dir / "tiny-det-yolo", folder, "det-nodule", {1: "nodule"})
    return ModelRegistry(folder)


def _members(*entries: tuple[str, dict[str, str]]) -> list[dict[str, Any]]:
    return [{"model": m, "device": "cpu", "label_map": lm} for m, lm in entries]


def _classify(registry: ModelRegistry, study: StudyInput, *entries: tuple[str, dict[str, str]]):  # type: ignore[no-untyped-def]
    cfg = config(2, {"classification": {"members": _members(*entries)}}, ["CR"])
    return Pipeline(cfg, registry).run(study).classification


def test_classifiers_with_other_names_are_refused_without_a_label_map(
    registry: ModelRegistry, cr_study: StudyInput
) -> None:
    with pytest.raises(PipelineModelError, match="disagree on labels.*label_map"):
        _classify(registry, cr_study, ("tiny-cls-resnet", {}), ("cls-renamed", {}))


def test_a_label_map_renames_a_members_classes(
    registry: ModelRegistry, cr_study: StudyInput
) -> None:
    alone = _classify(registry, cr_study, ("tiny-cls-resnet", {}))
    both = _classify(
        registry,
        cr_study,
        ("tiny-cls-resnet", {}),
        ("cls-renamed", {"healthy": "normal", "lesion": "abnormal"}),
    )
    assert both.classes == ("normal", "abnormal")
    np.testing.assert_allclose(both.probabilities, alone.probabilities, atol=1e-6)


def test_members_with_another_class_order_are_averaged_class_by_class(
    registry: ModelRegistry, cr_study: StudyInput
) -> None:
    alone = np.array(_classify(registry, cr_study, ("tiny-cls-resnet", {})).probabilities)
    mixed = _classify(registry, cr_study, ("tiny-cls-resnet", {}), ("cls-swapped", {}))
    # cls-swapped's first output is what tiny-cls-resnet calls "normal", but its card says
    # "abnormal": matched by name, its outputs enter the mean in the other order
    np.testing.assert_allclose(mixed.probabilities, (alone + alone[::-1]) / 2, atol=1e-6)
    assert mixed.member_probabilities["cls-swapped"] == pytest.approx(tuple(alone[::-1]), abs=1e-6)


def test_detectors_with_other_labels_are_refused_or_mapped(
    registry: ModelRegistry, cr_study: StudyInput
) -> None:
    def detect(*entries: tuple[str, dict[str, str]]):  # type: ignore[no-untyped-def]
        task = {"members": _members(*entries), "score_threshold": 0.0, "skip_threshold": 0.0}
        return Pipeline(config(2, {"detection": task}, ["CR"]), registry).run(cr_study)

    with pytest.raises(PipelineModelError, match="disagree on labels"):
        detect(("tiny-det-yolo", {}), ("det-nodule", {}))
    result = detect(("tiny-det-yolo", {}), ("det-nodule", {"nodule": "lesion"}))
    assert result.detections
    assert {box.label.name for box in result.detections} == {"lesion"}
    assert any(
        set(box.member_scores) == {"tiny-det-yolo", "det-nodule"} for box in result.detections
    )


def test_a_label_map_naming_a_label_the_card_lacks_is_refused(
    registry: ModelRegistry, cr_study: StudyInput
) -> None:
    with pytest.raises(PipelineModelError, match="label_map of cls-renamed names \\['tumour'\\]"):
        _classify(
            registry, cr_study, ("tiny-cls-resnet", {}), ("cls-renamed", {"tumour": "abnormal"})
        )
