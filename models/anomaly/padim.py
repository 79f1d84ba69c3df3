"""PaDiM: a Gaussian per feature-map position over a frozen timm backbone, Mahalanobis map.

The backbone (timm, ``features_only``, never pretrained: nothing downloads) is initialised from a
seed and its batch-norm statistics are adapted to the normal training phantoms; its weights are
then frozen. Features of two stages are concatenated at the finer stage's grid, a seeded random
subset of ``dims`` channels is kept (PaDiM's reduction), and each position gets the mean and the
(regularised) inverse covariance of the normal images' features there. A test image's map is the
Mahalanobis distance per position, upsampled to the input size and smoothed; its score is the
map's maximum. Everything (backbone weights included) lives in one npz, so the card's SHA-256
pins the whole model.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import ndimage

_BACKBONE = "backbone."


def build_backbone(architecture: str, out_indices: tuple[int, ...]) -> torch.nn.Module:
    """The frozen feature extractor, random-initialised (weights come from the npz or the seed)."""
    import timm

    network: torch.nn.Module = timm.create_model(
        architecture, pretrained=False, features_only=True, out_indices=out_indices, in_chans=1
    )
    return network.eval()


class Padim:
    """A fitted (or to-be-fitted) PaDiM model; see the module docstring."""

    def __init__(
        self,
        architecture: str = "resnet18",
        out_indices: tuple[int, ...] = (1, 2),
        dims: int = 48,
        sigma: float = 4.0,
        seed: int = 0,
        backbone: torch.nn.Module | None = None,
    ) -> None:
        self.architecture = architecture
        self.out_indices = tuple(out_indices)
        self.dims = dims
        self.sigma = sigma
        self.seed = seed
        if backbone is None:
            torch.manual_seed(seed)
            backbone = build_backbone(architecture, self.out_indices)
        self.backbone = backbone.eval()
        self.channels: np.ndarray | None = None  # the kept channel indices (dims,)
        self.mean: np.ndarray | None = None  # (positions, dims)
        self.cov_inv: np.ndarray | None = None  # (positions, dims, dims)
        self.grid: tuple[int, int] = (0, 0)

    def _all_features(self, images: np.ndarray, batch: int = 32) -> torch.Tensor:
        """(N, C, h, w) float32: every stage's features at the finest stage's grid."""
        parts = []
        with torch.inference_mode():
            for start in range(0, len(images), batch):
                x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch]))
                stages = self.backbone(x[:, None].float())
                size = stages[0].shape[-2:]
                parts.append(
                    torch.cat(
                        [stages[0]]
                        + [F.interpolate(s, size=size, mode="nearest") for s in stages[1:]],
                        dim=1,
                    )
                )
        return torch.cat(parts)

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, positions, dims) float64 features of the kept channels."""
        assert self.channels is not None
        feats = self._all_features(images)[:, torch.from_numpy(self.channels)]
        n, d, h, w = feats.shape
        self.grid = (h, w)
        return feats.permute(0, 2, 3, 1).reshape(n, h * w, d).double().numpy()

    def adapt_batchnorm(self, images: np.ndarray) -> None:
        """Batch-norm statistics from the normal images (cumulative mean), then frozen again."""
        for module in self.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        self.backbone.train()
        with torch.no_grad():
            for start in range(0, len(images), 32):
                self.backbone(torch.from_numpy(images[start : start + 32])[:, None].float())
        self.backbone.eval()
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)

    def fit(self, images: np.ndarray, adapt: bool = True) -> Padim:
        """Fit the per-position Gaussians on NORMAL ``images`` (N, H, W)."""
        if adapt:
            self.adapt_batchnorm(images)
        total = int(self._all_features(images[:1]).shape[1])
        rng = np.random.default_rng(self.seed)
        self.channels = np.sort(rng.choice(total, size=min(self.dims, total), replace=False))
        feats = self.features(images)  # (N, P, d)
        mean = feats.mean(axis=0)
        centred = feats - mean
        cov = np.einsum("npd,npe->pde", centred, centred) / max(len(images) - 1, 1)
        cov += 0.01 * np.eye(cov.shape[-1])[None]
        self.mean = mean.astype(np.float32)
        inverse = np.linalg.inv(cov)
        # exactly symmetric, so the file can keep one triangle (half the size) without loss
        self.cov_inv = ((inverse + inverse.transpose(0, 2, 1)) / 2).astype(np.float32)
        return self

    def score_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.mean is None or self.cov_inv is None:
            raise RuntimeError("Padim.score_maps before fit()")
        images = np.asarray(images, dtype=np.float32)
        delta = self.features(images) - self.mean[None].astype(np.float64)
        dist = np.einsum("npd,pde,npe->np", delta, self.cov_inv.astype(np.float64), delta)
        h, w = self.grid
        small = torch.from_numpy(np.sqrt(np.maximum(dist, 0)).reshape(-1, 1, h, w))
        up = F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False)
        maps = up[:, 0].numpy()
        if self.sigma > 0:
            maps = np.stack([ndimage.gaussian_filter(m, self.sigma) for m in maps])
        maps = maps.astype(np.float32)
        return maps.reshape(len(maps), -1).max(axis=1), maps

    def save(self, path: Path) -> None:
        """One npz: settings, kept channels, Gaussians (the inverse covariances' upper triangles)
        and the backbone's tensors."""
        if self.mean is None or self.cov_inv is None or self.channels is None:
            raise RuntimeError("Padim.save before fit()")
        arrays: dict[str, Any] = {  # Any: numpy's stubs read **kwargs of savez as its bool flag
            "architecture": np.array(self.architecture),
            "out_indices": np.array(self.out_indices, np.int64),
            "dims": np.array(self.dims),
            "sigma": np.array(self.sigma),
            "seed": np.array(self.seed),
            "grid": np.array(self.grid, np.int64),
            "channels": self.channels.astype(np.int64),
            "mean": self.mean,
            "cov_inv_triu": self.cov_inv[:, *np.triu_indices(self.cov_inv.shape[-1])],
        }
        for key, tensor in self.backbone.state_dict().items():
            arrays[_BACKBONE + key] = tensor.detach().cpu().numpy()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # uncompressed, no timestamps: a refit gives the same bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> Padim:
        """Rebuild the model from its npz (no pickles: ``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as data:
            out_indices = tuple(int(i) for i in data["out_indices"])
            architecture = str(data["architecture"])
            backbone = build_backbone(architecture, out_indices)
            state = {
                key[len(_BACKBONE) :]: torch.from_numpy(np.array(data[key]))
                for key in data.files
                if key.startswith(_BACKBONE)
            }
            backbone.load_state_dict(state, strict=True)
            model = cls(
                architecture,
                out_indices,
                int(data["dims"]),
                float(data["sigma"]),
                int(data["seed"]),
                backbone=backbone,
            )
            model.channels = np.array(data["channels"])
            model.mean = np.array(data["mean"])
            packed = np.array(data["cov_inv_triu"])
            dims = len(model.channels)
            rows, cols = np.triu_indices(dims)
            cov_inv = np.empty((packed.shape[0], dims, dims), np.float32)
            cov_inv[:, rows, cols] = packed
            cov_inv[:, cols, rows] = packed
            model.cov_inv = cov_inv
            model.grid = (int(data["grid"][0]), int(data["grid"][1]))
        return model
