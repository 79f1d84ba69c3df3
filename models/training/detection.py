"""Train the demo YOLO detector with ultralytics' own trainer, offline, on phantom PNGs.

Recipe (measured on held-out phantoms, ``evaluate_detection`` seed 999, one CPU thread):
the tiny network is far from converged after 20 epochs (mAP50 0.06); one 96 px epoch of 256
images costs about 1-3 s, so the schedule is long instead (100 epochs: mAP50 0.88, 200 epochs:
0.96, about 4 min). Per-epoch validation is off (``val=False``): ultralytics still validates
once after the last epoch and we keep those final weights. Training PNGs get the card's
intensity normalisation (percentile 0.5-99.5), the same the pipeline applies at inference
(raw [0, 1] images gave 0.87 vs 0.88 at 100 epochs). Training stays at imgsz 96: the loader
predicts on 96 px tensors without resizing, so a larger training size would change lesion scale.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from models.card import IntensitySpec, sha256_file
from models.loaders.ultralytics_env import prepare_offline
from models.training.datasets import Dataset2D
from models.training.preprocess import apply_intensity


def _write_split(root: Path, split: str, data: Dataset2D, intensity: IntensitySpec) -> None:
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    size = data.images.shape[-1]
    for i, (image, boxes) in enumerate(zip(data.images[:, 0], data.boxes, strict=True)):
        pixels = np.clip(apply_intensity(image, intensity), 0.0, 1.0)
        Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(images / f"{i:05d}.png")
        lines = [
            f"0 {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} {(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}"
            for x0, y0, x1, y1, _ in boxes
        ]
        (labels / f"{i:05d}.txt").write_text("\n".join(lines))


def train_yolo(
    definition: Path,
    train: Dataset2D,
    val: Dataset2D,
    epochs: int,
    seed: int,
    out_file: Path,
    intensity: IntensitySpec,
) -> str:
    """Train from the YAML definition; save a canonical checkpoint; return its SHA-256.

    Training images are normalised with ``intensity`` (the card's), as the pipeline does before
    inference.

    The checkpoint keeps only the (half-precision) model and minimal args, without dates or
    temporary paths, so a seeded retrain reproduces the file.
    """
    prepare_offline()
    from ultralytics import YOLO

    size = int(train.images.shape[-1])
    with tempfile.TemporaryDirectory(prefix="pacsnode-yolo-") as tmp:
        root = Path(tmp)
        _write_split(root / "data", "train", train, intensity)
        _write_split(root / "data", "val", val, intensity)
        data_yaml = root / "data.yaml"
        data_yaml.write_text(
            yaml.safe_dump(
                {
                    "path": str(root / "data"),
                    "train": "images/train",
                    "val": "images/val",
                    "names": {0: "lesion"},
                }
            )
        )
        model = YOLO(str(definition), task="detect")
        model.train(
            data=str(data_yaml),
            epochs=epochs,
            imgsz=size,
            batch=16,
            workers=0,
            device="cpu",
            seed=seed,
            deterministic=True,
            plots=False,
            amp=False,
            project=str(root / "runs"),
            name="train",
            exist_ok=True,
            verbose=False,
            patience=0,
            val=False,
            cache=False,
            mosaic=0.5,
            close_mosaic=max(1, epochs // 5),
            lr0=0.01,
            warmup_epochs=min(3, epochs // 4),
            optimizer="AdamW",
        )
        weights = root / "runs" / "train" / "weights"
        best = weights / "best.pt" if (weights / "best.pt").exists() else weights / "last.pt"
        ckpt = torch.load(best, map_location="cpu", weights_only=False)
    network = (ckpt.get("ema") or ckpt["model"]).float().half().eval()
    network.args = {"task": "detect", "imgsz": size}
    if isinstance(getattr(network, "yaml", None), dict):
        network.yaml["yaml_file"] = definition.name
    for attr in ("pt_path", "ckpt_path"):
        if hasattr(network, attr):
            setattr(network, attr, None)
    buffer = io.BytesIO()
    torch.save({"model": network, "train_args": {"task": "detect", "imgsz": size}}, buffer)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_bytes(buffer.getvalue())
    return sha256_file(out_file)
