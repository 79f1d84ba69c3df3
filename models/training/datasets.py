"""Phantom datasets as arrays, generated from a seed (train and held-out sets never share seeds)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.training.phantoms import Box, make_2d_phantom, make_3d_phantom


@dataclass(frozen=True)
class Dataset2D:
    images: np.ndarray  # float32 (N, 1, H, W) in [0, 1]
    masks: np.ndarray  # int64 (N, H, W)
    labels: np.ndarray  # int64 (N,)
    boxes: list[list[Box]]


@dataclass(frozen=True)
class Dataset3D:
    volumes: np.ndarray  # float32 (N, 1, D, H, W) already windowed to [0, 1]
    masks: np.ndarray  # int64 (N, D, H, W)
    labels: np.ndarray


CT_WINDOW = (40.0, 400.0)  # abdomen soft-tissue window (centre, width) in HU


def window(volume: np.ndarray, center: float, width: float) -> np.ndarray:
    low = center - width / 2
    return np.clip((volume - low) / width, 0.0, 1.0).astype(np.float32)


def make_dataset_2d(seed: int, count: int, size: int = 128) -> Dataset2D:
    rng = np.random.default_rng(seed)
    phantoms = [make_2d_phantom(rng, size=size) for _ in range(count)]
    return Dataset2D(
        images=np.stack([p.image for p in phantoms])[:, None],
        masks=np.stack([p.mask for p in phantoms]).astype(np.int64),
        labels=np.array([p.label for p in phantoms], np.int64),
        boxes=[list(p.boxes) for p in phantoms],
    )


def make_dataset_3d(seed: int, count: int, shape: tuple[int, int, int] = (32, 64, 64)) -> Dataset3D:
    rng = np.random.default_rng(seed)
    phantoms = [make_3d_phantom(rng, shape=shape) for _ in range(count)]
    return Dataset3D(
        volumes=np.stack([window(p.volume, *CT_WINDOW) for p in phantoms])[:, None],
        masks=np.stack([p.mask for p in phantoms]).astype(np.int64),
        labels=np.array([p.label for p in phantoms], np.int64),
    )
