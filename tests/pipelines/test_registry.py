from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import ConfigError, Settings
from models.registry import ModelRegistry
from pipelines.contract import StudyInput
from pipelines.registry import PipelineInputError, PipelineRegistry

PROJECT = Path(__file__).resolve().parents[2]


def _definition(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cls.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "cls",
                "version": "2",
                "selection": {"modality": ["CR", "DX"]},
                "tasks": {
                    "classification": {
                        "members": [{"model": "tiny-cls-resnet", "device": "cpu"}],
                        "threshold": 0.449,
                    }
                },
            }
        )
    )


def test_registry_runs_a_configured_pipeline_and_applies_overrides(
    settings: Settings, tmp_path: Path, model_registry: Any, cr_study: StudyInput
) -> None:
    _definition(tmp_path / "defs")
    settings = settings.model_copy(update={"pipelines_dir": tmp_path / "defs"})
    registry = PipelineRegistry(settings, models=model_registry)
    assert registry.names() == ["cls"]
    pipeline = registry.get("cls")
    assert (pipeline.name, pipeline.version, pipeline.config.review_required) == ("cls", "2", False)
    result = pipeline.run(cr_study)
    assert result.classification is not None and result.classification.threshold == 0.449

    registry.apply_overrides(
        "cls", {"review_required": True, "tasks": {"classification": {"threshold": 0.9}}}
    )
    again = registry.get("cls").run(cr_study)
    assert again.review_required and again.classification is not None
    assert again.classification.threshold == 0.9
    with pytest.raises(KeyError, match="known: cls"):
        registry.get("nope")
    with pytest.raises(ConfigError):
        registry.apply_overrides("nope", {})


def test_unknown_model_is_a_clear_error(
    settings: Settings, tmp_path: Path, model_registry: Any, cr_study: StudyInput
) -> None:
    folder = tmp_path / "defs"
    _definition(folder)
    text = (folder / "cls.yaml").read_text().replace("tiny-cls-resnet", "no-such-model")
    (folder / "cls.yaml").write_text(text)
    registry = PipelineRegistry(
        settings.model_copy(update={"pipelines_dir": folder}), models=model_registry
    )
    from pipelines.errors import PipelineModelError

    with pytest.raises(PipelineModelError, match="no-such-model"):
        registry.get("cls").run(cr_study)
    assert issubclass(PipelineInputError, Exception)


def _demo_cards_present(settings: Settings) -> bool:
    from models.card import load_cards

    needed = {
        "demo-seg-unet",
        "demo-seg-segresnet",
        "demo-cls-densenet",
        "demo-cls-resnet",
        "demo-cls-efficientnet",
        "demo-det-yolo",
    }
    return needed <= set(load_cards(settings.models_dir))


@pytest.mark.slow
def test_default_demo_2d_pipeline_on_a_phantom_radiograph(
    settings: Settings, cr_study: StudyInput
) -> None:
    """``make run`` behaviour: the shipped definitions with the shipped demo models."""
    if not _demo_cards_present(settings):
        pytest.skip(f"demo model cards not found in {settings.models_dir} (models not trained yet)")
    registry = PipelineRegistry(
        settings, ModelRegistry(settings.models_dir, settings.torch_threads)
    )
    result = registry.get("demo-2d").run(cr_study)
    assert result.segmentation is not None and result.classification is not None
    assert result.classification.threshold == pytest.approx(0.449)
    assert {r.model_name for r in result.model_runs} >= {"demo-seg-unet", "demo-cls-densenet"}
    assert result.findings, "the phantom has two lesions; the demo ensemble should find some"


@pytest.mark.slow
def test_default_demo_3d_pipeline_on_a_phantom_ct(settings: Settings, ct_study: StudyInput) -> None:
    if not _demo_cards_present(settings):
        pytest.skip(f"demo model cards not found in {settings.models_dir} (models not trained yet)")
    result = (
        PipelineRegistry(settings, ModelRegistry(settings.models_dir, settings.torch_threads))
        .get("demo-3d")
        .run(ct_study)
    )
    assert result.segmentation is not None and result.segmentation.label_map.shape == (12, 48, 48)
    assert result.classification is not None and result.modality == "CT"
    for finding in result.findings:
        assert finding.measurements.intensity_unit == "HU"
