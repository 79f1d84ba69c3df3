"""The ``anomaly`` task: spec validation, parity with the standalone models, the map on the
source geometry, ensembles on calibrated thresholds, and the demo pipeline's decision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.config import ConfigError
from models.anomaly.hog_iforest import HogIForest
from models.anomaly.padim import Padim
from models.registry import ModelRegistry
from models.training.anomaly import train_anomaly_models
from pipelines.contract import StudyInput
from pipelines.errors import PipelineModelError
from pipelines.pipeline import Pipeline
from pipelines.preprocess.decode import decode_series
from pipelines.preprocess.prepare import prepare_2d
from pipelines.spec import PipelineConfig, PreprocessingSpec, parse_pipeline_config
from tests.pipelines.conftest import study_from_files

PARITY_TOLERANCE = 1e-5
DEMO_MODELS = Path(__file__).resolve().parents[2] / "models" / "cards"


def config(tasks: dict[str, Any]) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"name": "anomaly-test", "version": "1", "selection": {"modality": ["CR"]}, "tasks": tasks}
    )


def members(*pairs: tuple[str, float]) -> dict[str, Any]:
    return {"members": [{"model": m, "weight": w, "device": "cpu"} for m, w in pairs]}


@pytest.fixture(scope="module")
def anomaly_registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    out = tmp_path_factory.mktemp("anomaly-models")
    train_anomaly_models(out, seed=11, quick=True)
    return ModelRegistry(out)


def _bare(registry: ModelRegistry, name: str, study: StudyInput) -> tuple[float, np.ndarray]:
    """The standalone model (loaded from its file, not the registry) on the prepared frame,
    its map put back on the source grid by the same letterbox."""
    import torch

    card = registry.card(name)
    method = (HogIForest if card.framework == "sklearn" else Padim).load(card.weights_path)
    prepared = prepare_2d(decode_series(study.series[0]), card.input, PreprocessingSpec())
    scores, maps = method.score_maps(prepared.batch[:, 0].numpy())
    source = prepared.letterbox.inverse(torch.from_numpy(maps[:, None])).numpy()[:, 0]
    return float(scores.max()), source


@pytest.mark.parametrize("name", ["demo-anomaly-padim", "demo-anomaly-hog"])
def test_one_member_equals_the_standalone_model(
    anomaly_registry: ModelRegistry, cr_study: StudyInput, name: str
) -> None:
    result = Pipeline(config({"anomaly": members((name, 1.0))}), anomaly_registry).run(cr_study)
    anomaly = result.anomaly
    assert anomaly is not None and anomaly.map is not None
    decoded = decode_series(cr_study.series[0])
    assert anomaly.map.shape == (1, *decoded.shape)  # source geometry, not the model's 96x96
    score, source_map = _bare(anomaly_registry, name, cr_study)
    assert abs(anomaly.score - score) <= PARITY_TOLERANCE
    assert np.abs(anomaly.map - source_map).max() <= PARITY_TOLERANCE
    card = anomaly_registry.card(name)
    assert card.anomaly is not None
    assert anomaly.threshold == card.anomaly.threshold and not anomaly.normalised
    assert anomaly.decision == ("anomalous" if score >= card.anomaly.threshold else "normal")
    assert [r.task for r in result.model_runs] == ["anomaly"]
    assert result.model_runs[0].weights_sha256 == card.sha256
    assert result.to_json_dict()["anomaly"]["score"] == pytest.approx(anomaly.score)


def test_ensemble_combines_scores_over_their_thresholds(
    anomaly_registry: ModelRegistry, cr_study: StudyInput
) -> None:
    pairs = (("demo-anomaly-padim", 3.0), ("demo-anomaly-hog", 1.0))
    result = Pipeline(config({"anomaly": members(*pairs)}), anomaly_registry).run(cr_study)
    anomaly = result.anomaly
    assert anomaly is not None and anomaly.normalised and anomaly.threshold == 1.0
    expected = 0.0
    for name, weight in pairs:
        score, _map = _bare(anomaly_registry, name, cr_study)
        card = anomaly_registry.card(name)
        assert card.anomaly is not None
        assert abs(anomaly.member_scores[name] - score) <= PARITY_TOLERANCE
        expected += weight / 4.0 * score / card.anomaly.threshold
    assert abs(anomaly.score - expected) <= PARITY_TOLERANCE


def test_threshold_override_and_no_map(
    anomaly_registry: ModelRegistry, cr_study: StudyInput
) -> None:
    task = {**members(("demo-anomaly-padim", 1.0)), "threshold": 1e6, "map": False}
    result = Pipeline(config({"anomaly": task}), anomaly_registry).run(cr_study)
    assert result.anomaly is not None
    assert result.anomaly.threshold == 1e6 and result.anomaly.decision == "normal"
    assert result.anomaly.map is None


def test_a_classifier_is_not_an_anomaly_member(model_registry: Any, cr_study: StudyInput) -> None:
    cfg = config({"anomaly": members(("tiny-cls-resnet", 1.0))})
    with pytest.raises(PipelineModelError, match="is a classification model"):
        Pipeline(cfg, model_registry).run(cr_study)


@pytest.mark.parametrize(
    ("anomaly", "message"),
    [
        ({"members": []}, "tasks.anomaly.members"),
        (
            {**members(("a", 1.0), ("b", 1.0)), "threshold": 3.0},
            "threshold overrides one model's calibrated threshold",
        ),
        ({**members(("a", 1.0)), "threshold": 0}, "tasks.anomaly.threshold"),
        ({**members(("a", 1.0)), "percentile": 90}, "tasks.anomaly.percentile"),
        ({**members(("a", 1.0), ("a", 2.0))}, "model(s) listed twice"),
    ],
)
def test_spec_errors_name_the_key(anomaly: dict[str, Any], message: str) -> None:
    data = {"name": "x", "version": "1", "selection": {"modality": ["CR"]}}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_pipeline_config({**data, "tasks": {"anomaly": anomaly}}, "x.yaml")


def test_an_anomaly_only_pipeline_is_valid() -> None:
    cfg = config({"anomaly": members(("demo-anomaly-padim", 1.0))})
    assert [name for name, _m in cfg.tasks.members()] == ["anomaly"]


def test_demo_pipeline_flags_lesions_and_passes_a_normal_image(
    cr_study: StudyInput, tmp_path: Path
) -> None:
    """The committed demo-anomaly-padim, as the demo-2d pipeline configures it, on phantom CRs
    (not in its training or calibration sets): lesions are anomalous, the normal image is not,
    and the lesions score higher than the normal image."""
    from models.training.dicom_export import write_series
    from models.training.phantoms import make_2d_phantom
    from pipelines.spec import load_pipeline_configs

    demo = load_pipeline_configs(Path(__file__).resolve().parents[2] / "pipelines" / "definitions")
    task = demo["demo-2d"].tasks.anomaly
    assert task is not None
    cfg = config({"anomaly": task.model_dump(mode="json")})
    registry = ModelRegistry(DEMO_MODELS)
    pipeline = Pipeline(cfg, registry)
    with_lesions = pipeline.run(cr_study).anomaly
    assert with_lesions is not None and with_lesions.decision == "anomalous"
    normal = make_2d_phantom(np.random.default_rng(31337), size=160, lesion_count=0)
    normal_study = study_from_files(write_series(normal, tmp_path, modality="CR"))
    result = pipeline.run(normal_study).anomaly
    assert result is not None and result.decision == "normal"
    assert result.score < with_lesions.score
