"""ultralytics YOLO detectors: a trained ``.pt`` checkpoint, or a ``.yaml`` definition (untrained).

``YOLO("yolo11n.yaml")`` builds the network from its definition; nothing is downloaded (see
:mod:`models.loaders.ultralytics_env`). Card ``arguments`` may set ``conf`` (default 0.25) and
``iou`` (NMS, default 0.5).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from models.card import ModelCard, ModelLoadError
from models.devices import DevicePlacement
from models.loaders import LoadedModel, RawBox
from models.loaders.ultralytics_env import prepare_offline


def load_ultralytics(card: ModelCard, placement: DevicePlacement, sha: str) -> LoadedModel:
    prepare_offline()
    from ultralytics import YOLO

    path = card.weights_path
    if path.suffix not in (".pt", ".yaml", ".yml"):
        raise ModelLoadError(
            f"model {card.name!r}: ultralytics weights must be .pt or .yaml, got {path.name}"
        )
    yolo = YOLO(str(path), task="detect")
    network: Any = yolo.model  # a DetectionModel once built (ultralytics types it str | None)
    network.to(placement.used).eval()
    size = card.input.spatial_size
    default_conf = float(card.arguments.get("conf", 0.25))
    iou = float(card.arguments.get("iou", 0.5))

    def detect(images: np.ndarray, conf: float | None) -> list[list[RawBox]]:
        batch = torch.from_numpy(np.ascontiguousarray(images))
        if batch.ndim == 3:
            batch = batch[:, None].expand(-1, 3, -1, -1)
        else:
            batch = batch.permute(0, 3, 1, 2)
        if tuple(batch.shape[2:]) != tuple(size):
            raise ValueError(
                f"model {card.name!r} expects images of {tuple(size)}, got {tuple(batch.shape[2:])}"
            )
        results = yolo.predict(
            batch.contiguous().clamp(0, 1),
            imgsz=list(size),
            conf=default_conf if conf is None else conf,
            iou=iou,
            device=placement.used,
            verbose=False,
            max_det=100,
        )
        out: list[list[RawBox]] = []
        for result in results:
            found: Any = result  # ultralytics types predictions as Results | Tensor
            boxes = found.boxes
            xyxy = boxes.xyxy.cpu().numpy()
            cls = boxes.cls.cpu().numpy().astype(int)
            scores = boxes.conf.cpu().numpy()
            out.append(
                [
                    (float(b[0]), float(b[1]), float(b[2]), float(b[3]), int(c), float(s))
                    for b, c, s in zip(xyxy, cls, scores, strict=True)
                ]
            )
        return out

    return LoadedModel(card, placement, sha, network=None, detector=detect)
