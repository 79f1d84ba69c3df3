"""The anomaly methods themselves: fitted on normal phantoms, saved, loaded behind a verified card.

Quick fits (few images) check the wiring and the maths: a loaded model gives the standalone
model's scores and maps (parity <= 1e-5), the files round-trip, a swapped file is refused, and a
lesion raises PaDiM's map where the lesion is. Accuracy is ``pacsnode evaluate``'s job
(tests/pipelines/test_evaluation_anomaly.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.anomaly import calibrate_threshold
from models.anomaly.hog_iforest import HogIForest
from models.anomaly.padim import Padim
from models.card import ModelCard, ModelLoadError, read_card
from models.loaders import load_model
from models.registry import ModelRegistry
from models.training.anomaly import (
    ANOMALY_MODELS,
    AnomalyDemo,
    lesion_images,
    normal_images,
    train_anomaly,
    train_anomaly_models,
)
from models.training.demo_specs import RADIOGRAPH_INPUT
from models.training.phantoms import make_2d_phantom
from models.training.preprocess import apply_intensity


@pytest.fixture(scope="module")
def quick_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("anomaly-models")
    train_anomaly_models(out, seed=5, quick=True)
    return out


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    return np.concatenate([normal_images(77, 2), lesion_images(78, 2)])


def test_training_writes_calibrated_cards(quick_models: Path) -> None:
    for name, weights in (
        ("demo-anomaly-hog", "model.joblib"),
        ("demo-anomaly-padim", "model.npz"),
    ):
        card = read_card(quick_models / name / "card.yaml")
        assert card.task == "anomaly" and card.weights == Path(weights)
        assert card.anomaly is not None and card.anomaly.percentile == 95.0
        assert card.anomaly.images == 8 and card.anomaly.threshold > 0
        assert "lesion_count=0" in card.training["data"]


@pytest.mark.parametrize(
    ("name", "standalone"),
    [("demo-anomaly-hog", HogIForest.load), ("demo-anomaly-padim", Padim.load)],
)
def test_loaded_model_matches_standalone(
    quick_models: Path, test_images: np.ndarray, name: str, standalone: object
) -> None:
    registry = ModelRegistry(quick_models)
    loaded = registry.get(name, "cpu")
    card = registry.card(name)
    method = standalone(card.weights_path)  # type: ignore[operator]
    scores, maps = loaded.anomaly_maps(test_images)
    ref_scores, ref_maps = method.score_maps(test_images)
    assert maps.shape == test_images.shape and maps.dtype == np.float32
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5, rtol=0)
    np.testing.assert_allclose(maps, ref_maps, atol=1e-5, rtol=0)
    np.testing.assert_allclose(scores, maps.reshape(len(maps), -1).max(axis=1), atol=1e-5)


def test_padim_refit_is_byte_identical(tmp_path: Path) -> None:
    """Seeded: the same normals and seed give the same npz, hence the same SHA-256/Device UID."""
    images = normal_images(3, 6)
    for name in ("a.npz", "b.npz"):
        fitted = Padim(dims=16, seed=9).fit(images)
        fitted.save(tmp_path / name)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = Padim.load(tmp_path / "a.npz")  # the file keeps one triangle: nothing is lost
    assert fitted.cov_inv is not None and loaded.cov_inv is not None
    assert np.array_equal(loaded.cov_inv, fitted.cov_inv)
    assert np.array_equal(loaded.score_maps(images)[1], fitted.score_maps(images)[1])


def test_padim_map_peaks_at_the_lesion() -> None:
    """Fitted on normals, the map is higher inside a strong lesion than elsewhere in the lungs."""
    model = Padim(dims=32, seed=1).fit(normal_images(10, 40))
    rng = np.random.default_rng(123)
    phantom = make_2d_phantom(rng, size=96, lesion_count=1)
    image = apply_intensity(phantom.image, RADIOGRAPH_INPUT.intensity)[None]
    _scores, maps = model.score_maps(image)
    inside = maps[0][phantom.mask > 0].mean()
    outside = maps[0][phantom.mask == 0].mean()
    assert inside > 1.5 * outside


def test_swapped_weights_are_refused(quick_models: Path, tmp_path: Path) -> None:
    card = read_card(quick_models / "demo-anomaly-padim" / "card.yaml")
    other = read_card(quick_models / "demo-anomaly-hog" / "card.yaml")
    swapped = card.model_copy(update={"card_path": None, "weights": other.weights_path})
    with pytest.raises(ModelLoadError, match="SHA-256 mismatch"):
        load_model(swapped, "cpu")


def test_card_validation(quick_models: Path) -> None:
    data = read_card(quick_models / "demo-anomaly-padim" / "card.yaml").model_dump(mode="json")
    without = {k: v for k, v in data.items() if k != "anomaly"}
    with pytest.raises(ValueError, match="anomaly model needs anomaly"):
        ModelCard.model_validate(without)
    with pytest.raises(ValueError, match="frameworks sklearn and padim are for task anomaly"):
        ModelCard.model_validate({**data, "task": "classification", "anomaly": None})
    with pytest.raises(ValueError, match="frameworks sklearn and padim are for task anomaly"):
        ModelCard.model_validate({**data, "framework": "timm"})


def test_threshold_is_the_percentile_of_normal_scores() -> None:
    scores = np.arange(1, 101, dtype=float)
    assert calibrate_threshold(scores, 95.0) == pytest.approx(95.05)


def test_unfitted_model_refuses_to_score() -> None:
    hog = HogIForest()
    with pytest.raises(RuntimeError, match="before fit"):
        hog.score_maps(np.zeros((1, 96, 96), np.float32))


def test_anomaly_models_run_on_the_cpu_and_say_so(quick_models: Path) -> None:
    """An explicit accelerator request is noted (the report shows it); ``auto`` is not."""
    from models.devices import DevicePlacement
    from models.loaders.anomaly import load_anomaly

    card = read_card(quick_models / "demo-anomaly-padim" / "card.yaml")
    asked = load_anomaly(card, DevicePlacement("cuda:0", "cuda:0"), card.sha256)
    assert asked.placement.used == "cpu" and "CPU only" in (asked.placement.warning or "")
    auto = load_anomaly(card, DevicePlacement("auto", "cuda"), card.sha256)
    assert auto.placement.used == "cpu" and auto.placement.warning is None


@pytest.mark.parametrize("demo", ANOMALY_MODELS, ids=lambda d: d.name)
def test_quick_training_is_reproducible(tmp_path: Path, demo: AnomalyDemo) -> None:
    """Same seed, same weights file (same SHA-256 and Device UID); another seed, another one."""
    first = train_anomaly(demo, tmp_path / "a", seed=42, quick=True)
    second = train_anomaly(demo, tmp_path / "b", seed=42, quick=True)
    other = train_anomaly(demo, tmp_path / "c", seed=43, quick=True)
    assert first.sha256 == second.sha256 and first.device_uid == second.device_uid
    assert first.anomaly == second.anomaly
    assert other.sha256 != first.sha256
