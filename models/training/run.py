"""``pacsnode train``: train every demo model on phantoms, write weights and cards.

Seeded and deterministic: the same seed on the same machine gives the same weights SHA-256 (the
``--quick`` mode is what the reproducibility test runs). Held-out evaluation sets use other seeds.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.card import DEMO_DISCLAIMER, ModelCard, write_card
from models.loaders.monai import build_monai_network
from models.training.anomaly import train_anomaly_models
from models.training.common import device_uid_for, save_state_dict, seed_everything
from models.training.datasets import Dataset2D, make_dataset_2d, make_dataset_3d
from models.training.demo_specs import (
    DEMO_MODELS,
    INPUT_SIZE_2D,
    YOLO_DEFINITION,
    DemoModel,
)
from models.training.detection import train_yolo
from models.training.enhancement import train_enhancement_models
from models.training.loops import train_classifier, train_segmentation
from models.training.preprocess import apply_intensity

log = logging.getLogger(__name__)

TRAIN_COUNTS = {"full": 256, "quick": 12}
TRAIN_COUNTS_3D = {"full": 192, "quick": 4}
VAL_COUNTS = {"full": 64, "quick": 8}


def _normalised(data: Dataset2D, model: DemoModel) -> np.ndarray:
    return np.stack([apply_intensity(img, model.input.intensity) for img in data.images])


def _build_network(model: DemoModel) -> torch.nn.Module:
    if model.framework == "monai":
        return build_monai_network(model.architecture, model.arguments)
    import timm

    kwargs: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in model.arguments.items()
    }
    network: torch.nn.Module = timm.create_model(
        model.architecture, pretrained=False, num_classes=len(model.labels), in_chans=1, **kwargs
    )
    return network


def _train_2d(
    model: DemoModel, weights: Path, seed: int, mode: str, epochs: int, rng: np.random.Generator
) -> tuple[str, list[float], str]:
    """Train a 2D model on radiograph phantoms; return (weights SHA-256, loss history, data note)."""
    train = make_dataset_2d(seed, TRAIN_COUNTS[mode], INPUT_SIZE_2D)
    history: list[float] = []
    if model.framework == "ultralytics":
        val = make_dataset_2d(seed + 1, VAL_COUNTS[mode], INPUT_SIZE_2D)
        sha = train_yolo(YOLO_DEFINITION, train, val, epochs, seed, weights, model.input.intensity)
        (weights.parent / YOLO_DEFINITION.name).write_text(YOLO_DEFINITION.read_text())
    else:
        network = _build_network(model)
        images = _normalised(train, model)
        if model.task == "segmentation":
            history = train_segmentation(
                network,
                images,
                train.masks,
                epochs,
                rng,
                lr=model.lr,
                batch_size=model.batch_size,
                desc=model.name,
            )
        else:
            history = train_classifier(
                network,
                images,
                train.labels,
                epochs,
                rng,
                lr=model.lr,
                batch_size=model.batch_size,
                desc=model.name,
            )
        sha = save_state_dict(network, weights)
    data = (
        f"procedural 2D radiograph phantoms (models.training.phantoms), {len(train.images)} "
        f"images at {INPUT_SIZE_2D}x{INPUT_SIZE_2D}, {int(train.labels.sum())} abnormal"
    )
    return sha, history, data


def _train_3d(
    model: DemoModel, weights: Path, seed: int, mode: str, epochs: int, rng: np.random.Generator
) -> tuple[str, list[float], str]:
    """Train a 3D segmentation model on whole CT phantoms at the card's grid (see ``_train_2d``)."""
    # make_dataset_3d windows with CT_WINDOW, the window the 3D cards declare
    depth, height, width = model.input.spatial_size  # a 3D card's grid
    shape = (depth, height, width)
    train = make_dataset_3d(seed, TRAIN_COUNTS_3D[mode], shape)
    network = _build_network(model)
    history = train_segmentation(
        network,
        train.volumes,
        train.masks,
        epochs,
        rng,
        lr=model.lr,
        batch_size=model.batch_size,
        desc=model.name,
    )
    spacing = "x".join(f"{s:g}" for s in model.input.pixdim or ())
    data = (
        f"procedural 3D CT phantoms (models.training.phantoms), {len(train.volumes)} volumes at "
        f"{'x'.join(map(str, shape))} voxels of {spacing} mm, "
        f"{int(train.labels.sum())} with lesions"
    )
    return save_state_dict(network, weights), history, data


def train_one(model: DemoModel, out_dir: Path, seed: int, quick: bool) -> ModelCard:
    """Train ``model`` and write ``out_dir/<name>/{model.pt,card.yaml}``; return the card."""
    mode = "quick" if quick else "full"
    rng = seed_everything(seed)
    epochs = 1 if quick else model.epochs
    folder = out_dir / model.name
    started = time.monotonic()
    train = _train_3d if model.input.dims == 3 else _train_2d
    sha, history, data = train(model, folder / model.weights_file, seed, mode, epochs, rng)
    training: dict[str, Any] = {
        "data": data,
        "seed": seed,
        "epochs": epochs,
        "quick": quick,
        "seconds": round(time.monotonic() - started, 1),
        "torch": torch.__version__,
    }
    if history:
        training["final_loss"] = round(history[-1], 4)
    card = ModelCard(
        name=model.name,
        version="1.0.0" if not quick else "0.0.0-quick",
        task=model.task,
        framework=model.framework,
        architecture=model.architecture,
        arguments=model.arguments,
        weights=Path(model.weights_file),
        sha256=sha,
        input=model.input,
        labels=model.labels,
        device_uid=device_uid_for(sha),
        disclaimer=DEMO_DISCLAIMER,
        training=training,
        metrics={},
    )
    write_card(card, folder / "card.yaml")
    log.info("trained %s in %.0f s (sha256 %s)", model.name, training["seconds"], sha[:12])
    return card.model_copy(update={"card_path": folder / "card.yaml"})


def train_demo_models(
    out_dir: Path, seed: int, only: str | None = None, quick: bool = False
) -> list[ModelCard]:
    """Train the demo models (optionally one task) into ``out_dir``; one seed offset per model."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cards = []
    for offset, model in enumerate(DEMO_MODELS):
        if only and model.task != only:
            continue
        cards.append(train_one(model, out_dir, seed + 1000 * offset, quick))
    if only in (None, "anomaly"):
        cards.extend(train_anomaly_models(out_dir, seed, quick))
    if only in (None, "enhancement"):
        cards.extend(train_enhancement_models(out_dir, seed, quick))
    return cards
