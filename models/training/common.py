"""Seeding, canonical weight files and fresh Device UIDs shared by the training recipes."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import numpy as np
import torch
from pydicom.uid import generate_uid

from models.card import sha256_file


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch, make torch deterministic; return a NumPy generator."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return np.random.default_rng(seed)


def save_state_dict(network: torch.nn.Module, path: Path) -> str:
    """Save a CPU float32 state_dict and return its file SHA-256.

    ``torch.save`` of the same tensors gives the same bytes, so a seeded retrain reproduces the
    SHA-256 (and with it the Device UID derived from it).
    """
    state = {k: v.detach().cpu().contiguous().clone() for k, v in network.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return sha256_file(path)


def device_uid_for(sha256: str) -> str:
    """An IHE AIR Device UID derived from the weights: retrained weights get a new UID."""
    return str(generate_uid(entropy_srcs=[f"pacsnode model weights {sha256}"]))


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """A hash over tensor values only (names, dtypes, bytes), independent of file metadata."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(
            tensor.numpy().tobytes()
            if tensor.dtype != torch.bfloat16
            else tensor.float().numpy().tobytes()
        )
    return digest.hexdigest()
