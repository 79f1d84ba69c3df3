"""Tiny freshly-initialised models and cards for the models tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.card import ModelCard, write_card
from models.loaders import weights_digest
from models.training.demo_specs import CLASS_LABELS, LESION

TINY_UNET = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
}


def make_card(
    folder: Path,
    name: str,
    weights: Path,
    *,
    task: str = "segmentation",
    framework: str = "monai",
    architecture: str = "UNet",
    arguments: dict[str, Any] | None = None,
    size: int = 32,
    sha256: str | None = None,
) -> ModelCard:
    """Write ``folder/<name>/card.yaml`` for ``weights`` and return the card as loaded."""
    labels = CLASS_LABELS if task == "classification" else [LESION]
    card = ModelCard(
        name=name,
        version="0.1",
        task=task,
        framework=framework,
        architecture=architecture,  # type: ignore[arg-type]
        arguments=arguments if arguments is not None else dict(TINY_UNET),
        weights=weights,
        sha256=sha256 or weights_digest(weights),
        input={"dims": 2, "channels": 1, "spatial_size": [size, size]},  # type: ignore[arg-type]
        labels=labels,
        device_uid="2.25.1234",
        disclaimer="test",
    )
    path = folder / name / "card.yaml"
    write_card(card, path)
    return card.model_copy(update={"card_path": path})


def tiny_unet_weights(path: Path, seed: int = 0) -> Path:
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    net = UNet(**{k: tuple(v) if isinstance(v, list) else v for k, v in TINY_UNET.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path
