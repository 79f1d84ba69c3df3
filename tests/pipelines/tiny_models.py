"""Tiny real models (MONAI, timm, ultralytics) with real cards, loaded by the real model registry.

Weights are random but seeded, so outputs are deterministic; these tests check the wiring and the
maths (parity, mapping, ensembles), not accuracy (that is ``pacsnode evaluate``'s job).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.card import ModelCard, sha256_file, write_card

LESION = {
    "value": 1,
    "name": "lesion",
    "category": {
        "value": "49755003",
        "scheme": "SCT",
        "meaning": "Morphologically Altered Structure",
    },
    "type": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"},
    "color": [255, 0, 0],
}
CLASSES = [
    {
        **LESION,
        "value": 1,
        "name": "normal",
        "type": {"value": "17621005", "scheme": "SCT", "meaning": "Normal"},
    },
    {
        **LESION,
        "value": 2,
        "name": "abnormal",
        "type": {"value": "263654008", "scheme": "SCT", "meaning": "Abnormal"},
    },
]
WINDOW_12BIT = {"mode": "window", "center": 2047.5, "width": 4095.0}
CT_WINDOW = {"mode": "window", "center": 40.0, "width": 400.0}


def _card(
    folder: Path,
    name: str,
    task: str,
    framework: str,
    architecture: str,
    arguments: dict[str, Any],
    weights: Path,
    input_spec: dict[str, Any],
    labels: list[Any],
) -> ModelCard:
    card = ModelCard.model_validate(
        {
            "name": name,
            "version": "0.0.1",
            "task": task,
            "framework": framework,
            "architecture": architecture,
            "arguments": arguments,
            "weights": weights.name,
            "sha256": sha256_file(weights),
            "input": input_spec,
            "labels": labels,
            "device_uid": "1.2.826.0.1.3680043.10.1359.99." + str(abs(hash(name)) % 10**6),
            "disclaimer": "test model",
        }
    )
    write_card(card, folder / "card.yaml")
    return card


def write_tiny_models(models_dir: Path) -> Path:
    """Write every tiny model under ``models_dir`` (one folder per card); return the folder."""
    from models.loaders.monai import build_monai_network

    specs: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
        (
            "tiny-seg-unet",
            "UNet",
            {
                "spatial_dims": 2,
                "in_channels": 1,
                "out_channels": 2,
                "channels": [4, 8],
                "strides": [2],
                "num_res_units": 0,
            },
            {"dims": 2, "spatial_size": [64, 64], "intensity": WINDOW_12BIT},
        ),
        (
            "tiny-seg-segresnet",
            "SegResNet",
            {
                "spatial_dims": 2,
                "in_channels": 1,
                "out_channels": 2,
                "init_filters": 8,
                "blocks_down": [1, 1],
                "blocks_up": [1],
            },
            {"dims": 2, "spatial_size": [64, 64], "intensity": WINDOW_12BIT},
        ),
        (
            "tiny-seg3d-unet",
            "UNet",
            {
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 2,
                "channels": [4, 8],
                "strides": [2],
                "num_res_units": 0,
            },
            {
                "dims": 3,
                "spatial_size": [16, 32, 32],
                "axcodes": "SPL",  # (frame, row, column) of an axial series sorted by position
                "pixdim": [2.0, 1.5, 1.5],
                "intensity": CT_WINDOW,
            },
        ),
    ]
    for index, (name, arch, args, input_spec) in enumerate(specs):
        torch.manual_seed(index)
        net = build_monai_network(arch, args)
        folder = models_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / "model.pt"
        torch.save(net.state_dict(), weights)
        _card(folder, name, "segmentation", "monai", arch, args, weights, input_spec, [LESION])

    import timm

    for index, (name, arch) in enumerate(
        [("tiny-cls-resnet", "resnet10t"), ("tiny-cls-efficientnet", "test_efficientnet")]
    ):
        torch.manual_seed(100 + index)
        args = {"num_classes": 2, "in_chans": 1}
        net = timm.create_model(arch, pretrained=False, **args)
        folder = models_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / "model.pt"
        torch.save(net.state_dict(), weights)
        input_spec = {
            "dims": 2,
            "spatial_size": [64, 64],
            "intensity": {**WINDOW_12BIT, "mean": [0.5], "std": [0.25]},
        }
        _card(folder, name, "classification", "timm", arch, args, weights, input_spec, CLASSES)

    import ultralytics

    yaml_src = Path(ultralytics.__file__).parent / "cfg" / "models" / "11" / "yolo11.yaml"
    folder = models_dir / "tiny-det-yolo"
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "yolo11n.yaml"
    text = yaml_src.read_text().replace("nc: 80", "nc: 1")
    weights.write_text(text)
    _card(
        folder,
        "tiny-det-yolo",
        "detection",
        "ultralytics",
        "yolo11n",
        {"conf": 0.01},
        weights,
        {"dims": 2, "channels": 3, "spatial_size": [64, 64], "intensity": WINDOW_12BIT},
        [LESION],
    )
    return models_dir
