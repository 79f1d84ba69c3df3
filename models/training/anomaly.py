"""Train the demo anomaly models on NORMAL radiograph phantoms and calibrate their thresholds.

Both methods (``demo-anomaly-hog``: HOG + Isolation Forest; ``demo-anomaly-padim``: PaDiM over a
seeded timm ``resnet18``) see only phantoms made with ``lesion_count=0``. The decision threshold is
the 95th percentile of scores on another seed's normal phantoms, recorded in the card's
``anomaly`` block. Held-out AUROC (normal vs with lesions) is ``pacsnode evaluate``'s job
(:mod:`pipelines.evaluation_anomaly`). Each method fits in well under a minute on one CPU core.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.anomaly import AnomalyMethod, calibrate_threshold
from models.anomaly.hog_iforest import HogIForest
from models.anomaly.padim import Padim
from models.card import (
    DEMO_DISCLAIMER,
    AnomalyCalibration,
    CardLabel,
    CodedConceptModel,
    ModelCard,
    sha256_file,
    write_card,
)
from models.training.common import device_uid_for, seed_everything
from models.training.demo_specs import FINDING, INPUT_SIZE_2D, RADIOGRAPH_INPUT
from models.training.phantoms import make_2d_phantom
from models.training.preprocess import apply_intensity

log = logging.getLogger(__name__)

ANOMALY_LABEL = CardLabel(
    value=1,
    name="anomaly",
    category=FINDING,
    type=CodedConceptModel(value="263654008", scheme="SCT", meaning="Abnormal"),
    color=(255, 160, 0),
)
TRAIN_NORMALS = {"full": 200, "quick": 16}
CALIBRATION_NORMALS = {"full": 100, "quick": 8}
CALIBRATION_PERCENTILE = 95.0


@dataclass(frozen=True)
class AnomalyDemo:
    name: str
    framework: str  # sklearn | padim
    architecture: str
    arguments: dict[str, Any]
    weights_file: str

    def build(self, seed: int) -> HogIForest | Padim:
        if self.framework == "sklearn":
            return HogIForest(seed=seed, **self.arguments)
        return Padim(architecture=self.architecture, seed=seed, **self.arguments)


ANOMALY_MODELS = (
    AnomalyDemo(
        "demo-anomaly-hog",
        "sklearn",
        "hog-isolation-forest",
        {"pixels_per_cell": 8, "cells_per_block": 2, "orientations": 9, "n_estimators": 200},
        "model.joblib",
    ),
    AnomalyDemo("demo-anomaly-padim", "padim", "resnet18", {"dims": 48, "sigma": 4.0}, "model.npz"),
)


def normal_images(seed: int, count: int, size: int = INPUT_SIZE_2D) -> np.ndarray:
    """(count, size, size) normal phantoms (no lesion), normalised like the cards' input."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            apply_intensity(
                make_2d_phantom(rng, size=size, lesion_count=0).image, RADIOGRAPH_INPUT.intensity
            )
            for _ in range(count)
        ]
    )


def lesion_images(seed: int, count: int, size: int = INPUT_SIZE_2D) -> np.ndarray:
    """(count, size, size) phantoms with 1-3 lesions each, normalised like the cards' input."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            apply_intensity(
                make_2d_phantom(rng, size=size, lesion_count=int(rng.integers(1, 4))).image,
                RADIOGRAPH_INPUT.intensity,
            )
            for _ in range(count)
        ]
    )


def train_anomaly(demo: AnomalyDemo, out_dir: Path, seed: int, quick: bool) -> ModelCard:
    """Fit ``demo`` on normal phantoms, calibrate, write ``out_dir/<name>/`` and return the card."""
    mode = "quick" if quick else "full"
    seed_everything(seed)
    started = time.monotonic()
    train = normal_images(seed, TRAIN_NORMALS[mode])
    method: AnomalyMethod = demo.build(seed).fit(train)
    calibration = normal_images(seed + 1, CALIBRATION_NORMALS[mode])
    scores, _maps = method.score_maps(calibration)
    threshold = calibrate_threshold(scores, CALIBRATION_PERCENTILE)
    folder = out_dir / demo.name
    weights = folder / demo.weights_file
    method.save(weights)
    sha = sha256_file(weights)
    card = ModelCard(
        name=demo.name,
        version="1.0.0" if not quick else "0.0.0-quick",
        task="anomaly",
        framework=demo.framework,  # type: ignore[arg-type]
        architecture=demo.architecture,
        arguments=demo.arguments,
        weights=Path(demo.weights_file),
        sha256=sha,
        input=RADIOGRAPH_INPUT,
        labels=[ANOMALY_LABEL],
        anomaly=AnomalyCalibration(
            threshold=round(threshold, 6),
            percentile=CALIBRATION_PERCENTILE,
            images=len(calibration),
        ),
        device_uid=device_uid_for(sha),
        disclaimer=DEMO_DISCLAIMER,
        training={
            "data": (
                f"procedural 2D radiograph phantoms without lesions (models.training.phantoms, "
                f"lesion_count=0), {len(train)} images at {INPUT_SIZE_2D}x{INPUT_SIZE_2D}; "
                f"threshold: {CALIBRATION_PERCENTILE:g}th percentile of {len(calibration)} "
                f"other normal phantoms (seed {seed + 1})"
            ),
            "seed": seed,
            "quick": quick,
            "seconds": round(time.monotonic() - started, 1),
        },
        metrics={},
    )
    write_card(card, folder / "card.yaml")
    log.info("trained %s in %.0f s (sha256 %s)", demo.name, card.training["seconds"], sha[:12])
    return card.model_copy(update={"card_path": folder / "card.yaml"})


def train_anomaly_models(out_dir: Path, seed: int, quick: bool = False) -> list[ModelCard]:
    """Every demo anomaly model, one seed offset per model (after the other demo models')."""
    return [
        train_anomaly(demo, out_dir, seed + 7000 + 1000 * offset, quick)
        for offset, demo in enumerate(ANOMALY_MODELS)
    ]
