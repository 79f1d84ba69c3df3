"""Train the demo denoisers on radiograph phantoms with synthetic noise (supervised).

``demo-denoise-dncnn`` learns clean phantom ← noisy phantom on random crops, fresh noise every
step: Gaussian with σ drawn per image plus a signal-dependent (Poisson-like) part, the two noise
kinds of X-ray detectors. ``demo-denoise-nlm`` is non-local means: nothing to learn, its card pins
its parameters. Both see images as :func:`models.enhance.to_unit` gives them, with the range taken
from the NOISY image — exactly what a pipeline sees. The network trains in about a minute on one
CPU core (``training.seconds`` in its card).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from models.card import (
    DEMO_DISCLAIMER,
    InputSpec,
    IntensitySpec,
    ModelCard,
    sha256_file,
    write_card,
)
from models.enhance import NlmDenoiser, ResidualDenoiser, to_unit, unit_range
from models.training.common import device_uid_for, save_state_dict, seed_everything
from models.training.phantoms import make_2d_phantom

log = logging.getLogger(__name__)

PATCH = 64
PHANTOM_SIZE = 128
NETWORK_ARGUMENTS = {"channels": 24, "depth": 5}
NLM_PARAMETERS = NlmDenoiser()
STEPS = {"full": 400, "quick": 3}
PHANTOMS = {"full": 48, "quick": 4}
BATCH = 16
GAUSSIAN_SIGMA = (0.02, 0.08)  # in phantom units (the phantom spans about 0..1)
POISSON_GAIN = (0.0, 0.003)  # variance per unit of signal
# the network sees unit-range images whatever the source's units (see models.enhance)
DENOISE_INPUT = InputSpec(
    dims=2,
    channels=1,
    spatial_size=(PATCH, PATCH),
    intensity=IntensitySpec(mode="percentile", lower_percentile=0.5, upper_percentile=99.5),
)


def add_noise(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``clean`` plus Gaussian and signal-dependent noise of a random strength."""
    sigma = rng.uniform(*GAUSSIAN_SIGMA)
    gain = rng.uniform(*POISSON_GAIN)
    std = np.sqrt(sigma**2 + gain * np.clip(clean, 0, None))
    return (clean + rng.normal(0, 1, clean.shape) * std).astype(np.float32)


def clean_phantoms(seed: int, count: int, size: int = PHANTOM_SIZE) -> np.ndarray:
    """(count, size, size) noise-free radiograph phantoms (0..3 lesions)."""
    rng = np.random.default_rng(seed)
    return np.stack([make_2d_phantom(rng, size=size, noise=0.0).image for _ in range(count)])


def noisy_pair(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean), both mapped to the unit range the NOISY image defines."""
    noisy = add_noise(clean, rng)
    low, high = unit_range(noisy)
    return to_unit(noisy, low, high), to_unit(clean, low, high)


def _batch(phantoms: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for _ in range(BATCH):
        image = phantoms[int(rng.integers(len(phantoms)))]
        noisy, clean = noisy_pair(image, rng)
        r, c = (int(v) for v in rng.integers(0, PHANTOM_SIZE - PATCH + 1, 2))
        xs.append(noisy[r : r + PATCH, c : c + PATCH])
        ys.append(clean[r : r + PATCH, c : c + PATCH])
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))[:, None]


def _card(
    name: str,
    framework: str,
    architecture: str,
    arguments: dict,
    weights: str,
    sha: str,
    quick: bool,
    training: dict,
) -> ModelCard:
    return ModelCard(
        name=name,
        version="1.0.0" if not quick else "0.0.0-quick",
        task="enhancement",
        framework=framework,  # type: ignore[arg-type]
        architecture=architecture,
        arguments=arguments,
        weights=Path(weights),
        sha256=sha,
        input=DENOISE_INPUT,
        labels=[],
        device_uid=device_uid_for(sha),
        disclaimer=DEMO_DISCLAIMER,
        training=training,
        metrics={},
    )


def train_dncnn(out_dir: Path, seed: int, quick: bool) -> ModelCard:
    """Fit the residual CNN; write ``out_dir/demo-denoise-dncnn/`` and return its card."""
    mode = "quick" if quick else "full"
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    phantoms = clean_phantoms(seed, PHANTOMS[mode])
    network = ResidualDenoiser(**NETWORK_ARGUMENTS)
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, STEPS[mode])
    network.train()
    for _ in range(STEPS[mode]):
        noisy, clean = _batch(phantoms, rng)
        loss = torch.nn.functional.mse_loss(network(noisy), clean)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    folder = out_dir / "demo-denoise-dncnn"
    sha = save_state_dict(network, folder / "model.pt")
    training = {
        "data": (
            f"{len(phantoms)} noise-free procedural radiograph phantoms "
            f"(models.training.phantoms, {PHANTOM_SIZE}x{PHANTOM_SIZE}), random {PATCH}x{PATCH} "
            f"crops with fresh Gaussian (σ {GAUSSIAN_SIGMA[0]}-{GAUSSIAN_SIGMA[1]}) plus "
            f"signal-dependent (variance gain {POISSON_GAIN[0]}-{POISSON_GAIN[1]}) noise; "
            f"supervised MSE, {STEPS[mode]} steps of {BATCH}"
        ),
        "seed": seed,
        "quick": quick,
        "seconds": round(time.monotonic() - started, 1),
        "final_loss": round(float(loss.item()), 6),
    }
    card = _card(
        "demo-denoise-dncnn",
        "dncnn",
        "residual-denoiser",
        dict(NETWORK_ARGUMENTS),
        "model.pt",
        sha,
        quick,
        training,
    )
    write_card(card, folder / "card.yaml")
    log.info("trained demo-denoise-dncnn in %.0f s (sha256 %s)", training["seconds"], sha[:12])
    return card.model_copy(update={"card_path": folder / "card.yaml"})


def write_nlm(out_dir: Path, quick: bool) -> ModelCard:
    """The classical baseline's card: its parameters as the weights file."""
    folder = out_dir / "demo-denoise-nlm"
    NLM_PARAMETERS.save(folder / "params.json")
    sha = sha256_file(folder / "params.json")
    training = {"data": "none: non-local means (scikit-image) with h = h_factor × estimated σ"}
    card = _card(
        "demo-denoise-nlm",
        "classical",
        "non-local-means",
        NLM_PARAMETERS.params(),
        "params.json",
        sha,
        quick,
        training,
    )
    write_card(card, folder / "card.yaml")
    return card.model_copy(update={"card_path": folder / "card.yaml"})


def train_enhancement_models(out_dir: Path, seed: int, quick: bool = False) -> list[ModelCard]:
    """Both demo denoisers; the network's seed is offset after the anomaly models'."""
    return [train_dncnn(out_dir, seed + 9000, quick), write_nlm(out_dir, quick)]
