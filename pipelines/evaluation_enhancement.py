"""``pacsnode evaluate`` for denoisers: PSNR and SSIM on held-out noisy phantoms.

The held-out set uses the evaluation seed (never the training seed): ``HELDOUT`` noise-free
radiograph phantoms at ``SIZE``² with the training noise model added. Each denoiser sees the noisy
image as a pipeline would (unit range from the noisy image, back to phantom units after), and is
scored against the clean phantom in phantom units (data range 1). The noisy input is scored too:
a denoiser must beat it, and the report says how the network compares with non-local means.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from models.enhance import from_unit, noise_sigma, to_unit, unit_range
from models.loaders import LoadedModel
from models.training.enhancement import add_noise, clean_phantoms

HELDOUT = 16
SIZE = 256
NOISY_INPUT = "noisy input"


def heldout_enhancement_set(seed: int, count: int = HELDOUT) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) (count, SIZE, SIZE) float32 phantoms for ``seed``."""
    clean = clean_phantoms(seed + 21, count, SIZE)
    rng = np.random.default_rng(seed + 22)
    noisy = np.stack([add_noise(image, rng) for image in clean])
    return clean, noisy


def denoise_in_units(model: LoadedModel, images: np.ndarray) -> np.ndarray:
    """Each image through ``model`` in the unit range its own values define, back in its units."""
    out = np.empty_like(images, dtype=np.float32)
    for i, image in enumerate(images):
        low, high = unit_range(image)
        out[i] = from_unit(model.denoise(to_unit(image, low, high)[None])[0], low, high)
    return out


def _scores(clean: np.ndarray, images: np.ndarray) -> dict[str, float]:
    psnr = [
        peak_signal_noise_ratio(c, x, data_range=1.0) for c, x in zip(clean, images, strict=True)
    ]
    ssim = [structural_similarity(c, x, data_range=1.0) for c, x in zip(clean, images, strict=True)]
    sigma = [noise_sigma(x) for x in images]
    return {
        "psnr_db": round(float(np.mean(psnr)), 3),
        "ssim": round(float(np.mean(ssim)), 4),
        "noise_sigma": round(float(np.mean(sigma)), 5),
        "images": len(images),
    }


def evaluate_enhancement(models: dict[str, LoadedModel], seed: int) -> dict[str, dict[str, Any]]:
    """PSNR (dB), SSIM and estimated noise σ per denoiser and for the noisy input."""
    clean, noisy = heldout_enhancement_set(seed)
    results = {NOISY_INPUT: _scores(clean, noisy)}
    for name, model in models.items():
        results[name] = _scores(clean, denoise_in_units(model, noisy))
    return results


def enhancement_comparison(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Which denoiser scored best on PSNR and on SSIM, and whether each beat the noisy input."""
    models = {k: v for k, v in results.items() if k != NOISY_INPUT}
    noisy = results[NOISY_INPUT]
    return {
        "best_psnr": max(models, key=lambda k: models[k]["psnr_db"]) if models else None,
        "best_ssim": max(models, key=lambda k: models[k]["ssim"]) if models else None,
        "beats_noisy_input": {
            k: v["psnr_db"] > noisy["psnr_db"] and v["ssim"] > noisy["ssim"]
            for k, v in models.items()
        },
        NOISY_INPUT: noisy,
    }


def format_enhancement(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = [f"enhancement (held-out noisy phantoms, {SIZE}x{SIZE}):"]
    for name, r in results.items():
        lines.append(
            f"  {name}: PSNR {r['psnr_db']} dB, SSIM {r['ssim']}, σ̂ {r['noise_sigma']} "
            f"({r['images']} images)"
        )
    comparison = enhancement_comparison(results)
    lines.append(
        f"  best PSNR: {comparison['best_psnr']}, best SSIM: {comparison['best_ssim']}; "
        f"beats noisy input: {comparison['beats_noisy_input']}"
    )
    return lines
