"""Small, seeded training loops for segmentation (MONAI) and classification (timm) networks."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm


def _augment(
    x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips along the last axis (left/right symmetry) and intensity jitter."""
    if rng.random() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    scale = float(rng.uniform(0.9, 1.1))
    shift = float(rng.uniform(-0.05, 0.05))
    return x * scale + shift, y


def train_segmentation(
    network: torch.nn.Module,
    images: np.ndarray,
    masks: np.ndarray,
    epochs: int,
    rng: np.random.Generator,
    batch_size: int = 16,
    lr: float = 3e-3,
    desc: str = "segmentation",
) -> list[float]:
    """Dice + cross-entropy on (background, lesion); returns the mean loss per epoch."""
    from monai.losses import DiceCELoss

    # background Dice is ~1 whatever the net does and would drown the lesion term
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(images) / batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(steps, 1))
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(masks)[:, None]
    history: list[float] = []
    network.train()
    with tqdm(total=steps, desc=desc, unit="step", leave=False) as bar:
        for _ in range(epochs):
            order = rng.permutation(len(images))
            losses = []
            for start in range(0, len(order), batch_size):
                idx = torch.from_numpy(order[start : start + batch_size])
                x, y = _augment(x_all[idx], y_all[idx], rng)
                optimiser.zero_grad()
                out = network(x)
                if isinstance(out, (list, tuple)):
                    out = out[0]
                loss = loss_fn(out, y)
                loss.backward()
                optimiser.step()
                schedule.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses):.3f}")
            history.append(float(np.mean(losses)))
    network.eval()
    return history


def train_classifier(
    network: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    rng: np.random.Generator,
    batch_size: int = 32,
    lr: float = 3e-3,
    desc: str = "classification",
) -> list[float]:
    """Cross-entropy with label smoothing; returns the mean loss per epoch."""
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(images) / batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(steps, 1))
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    history: list[float] = []
    network.train()
    with tqdm(total=steps, desc=desc, unit="step", leave=False) as bar:
        for _ in range(epochs):
            order = rng.permutation(len(images))
            losses = []
            for start in range(0, len(order), batch_size):
                idx = torch.from_numpy(order[start : start + batch_size])
                x, _ = _augment(x_all[idx], x_all[idx], rng)
                optimiser.zero_grad()
                loss = loss_fn(network(x), y_all[idx])
                loss.backward()
                optimiser.step()
                schedule.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses):.3f}")
            history.append(float(np.mean(losses)))
    network.eval()
    return history
