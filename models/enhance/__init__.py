"""Denoisers for the ``enhancement`` task: non-local means (classical) and a small residual CNN.

Both work on one image at a time in a normalised range and give it back in the source's units:
:func:`to_unit` maps an image linearly (no clipping) so its 0.5th/99.5th percentiles become 0/1,
:func:`from_unit` inverts the same map. Nothing is resized, so the denoised image keeps the source
geometry pixel for pixel, and HU stay HU. The network is fully convolutional and runs at any size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.restoration import denoise_nl_means

LOWER_PERCENTILE = 0.5
UPPER_PERCENTILE = 99.5


def unit_range(image: np.ndarray) -> tuple[float, float]:
    """The (low, high) values :func:`to_unit` maps to 0 and 1 (high > low always)."""
    low, high = np.percentile(image, [LOWER_PERCENTILE, UPPER_PERCENTILE])
    if high - low < 1e-6:
        high = low + 1.0
    return float(low), float(high)


def to_unit(image: np.ndarray, low: float, high: float) -> np.ndarray:
    return ((np.asarray(image, np.float32) - low) / (high - low)).astype(np.float32)


def from_unit(image: np.ndarray, low: float, high: float) -> np.ndarray:
    return (np.asarray(image, np.float32) * (high - low) + low).astype(np.float32)


def noise_sigma(image: np.ndarray) -> float:
    """Gaussian noise σ estimated from the image alone, in its units: the quality figure where no
    clean reference exists.

    Donoho's wavelet MAD estimator (what scikit-image's ``estimate_sigma`` computes with a db2
    wavelet via PyWavelets) on the finest Haar diagonal detail, which needs no extra dependency:
    ``σ = median(|HH|) / 0.6745``.
    """
    x = np.asarray(image, np.float64)
    x = x[: x.shape[0] // 2 * 2, : x.shape[1] // 2 * 2]
    if x.size < 4:
        return 0.0
    hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(hh)) / 0.6745)


@dataclass(frozen=True)
class NlmDenoiser:
    """Non-local means (scikit-image) with ``h = h_factor × σ̂`` per image: the classical baseline.

    Its "weights" are these parameters, stored as JSON so the card's SHA-256 pins them.
    """

    patch_size: int = 5
    patch_distance: int = 6
    h_factor: float = 0.8

    def denoise(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W) float32 in the unit range -> same shape, denoised."""
        out = np.empty_like(images, dtype=np.float32)
        for i, image in enumerate(np.asarray(images, np.float64)):
            sigma = noise_sigma(image)
            out[i] = denoise_nl_means(
                image,
                h=self.h_factor * max(sigma, 1e-6),
                sigma=sigma,
                patch_size=self.patch_size,
                patch_distance=self.patch_distance,
                fast_mode=True,
            )
        return out

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.params(), sort_keys=True) + "\n", encoding="utf-8")

    def params(self) -> dict[str, Any]:
        return {
            "patch_size": self.patch_size,
            "patch_distance": self.patch_distance,
            "h_factor": self.h_factor,
        }

    @classmethod
    def load(cls, path: Path) -> NlmDenoiser:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


class ResidualDenoiser(torch.nn.Module):
    """DnCNN-style network (Zhang et al. 2017) without batch norm: it predicts the noise and
    subtracts it from its input, so an untrained residual of zero is the identity."""

    def __init__(self, channels: int = 32, depth: int = 6) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = [
            torch.nn.Conv2d(1, channels, 3, padding=1),
            torch.nn.ReLU(),
        ]
        for _ in range(depth - 2):
            layers += [torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.ReLU()]
        layers.append(torch.nn.Conv2d(channels, 1, 3, padding=1))
        self.body = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)


TILE = 512  # frames larger than this run in tiles, bounding memory on full-size radiographs
TILE_MARGIN = 16  # at least; more when the network's receptive radius is larger


def receptive_radius(network: torch.nn.Module) -> int:
    """Pixels of context each output pixel sees on each side (stride-1 convolutions)."""
    return sum(
        int(m.kernel_size[0]) // 2 * int(m.dilation[0])
        for m in network.modules()
        if isinstance(m, torch.nn.Conv2d)
    )


def network_denoise(
    network: torch.nn.Module, images: np.ndarray, device: str, tile: int = TILE
) -> np.ndarray:
    """(N, H, W) float32 unit-range images through ``network`` on ``device`` -> (N, H, W).

    A frame larger than ``tile`` is processed in ``tile``² pieces, each with a border of context
    wider than the network's receptive radius that is then cut away, so the result equals one whole-frame pass while the
    activations of a 3000² radiograph need not fit at once.
    """
    images = np.ascontiguousarray(images, np.float32)
    out = np.empty_like(images)
    rows, cols = images.shape[1:]
    margin = max(TILE_MARGIN, receptive_radius(network) + 1)
    with torch.inference_mode():
        for r0 in range(0, rows, tile):
            for c0 in range(0, cols, tile):
                r1, c1 = min(r0 + tile, rows), min(c0 + tile, cols)
                pr0, pc0 = max(r0 - margin, 0), max(c0 - margin, 0)
                pr1, pc1 = min(r1 + margin, rows), min(c1 + margin, cols)
                x = torch.from_numpy(images[:, pr0:pr1, pc0:pc1])[:, None].to(device)
                y = network(x)[:, 0].float().cpu().numpy()
                out[:, r0:r1, c0:c1] = y[:, r0 - pr0 : r1 - pr0, c0 - pc0 : c1 - pc0]
    return out
