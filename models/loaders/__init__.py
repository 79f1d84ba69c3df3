"""Load a model described by a card onto a device, verified, warm, and behind one small interface.

Every framework (MONAI, timm, ultralytics, TorchScript, nnU-Net) ends up as a :class:`LoadedModel` whose
``forward`` returns CPU float32 probabilities and whose ``detect`` returns raw boxes, so pipelines
and ensembles never branch on the framework. The weights' SHA-256 is checked against the card
before any bytes are unpickled: a mismatch refuses the model with a clear :class:`ModelLoadError`.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models.card import ModelCard, ModelLoadError, sha256_file
from models.devices import DevicePlacement, resolve_device

if TYPE_CHECKING:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from models.loaders.monai_bundle import MonaiBundle

log = logging.getLogger(__name__)

RawBox = tuple[float, float, float, float, int, float]  # x0, y0, x1, y1, class_index, score
Detector = Callable[[np.ndarray, float | None], list[list[RawBox]]]
# images (N, H, W) float32 at the input size -> (scores (N,), maps (N, H, W) float32)
AnomalyScorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# images (N, H, W) float32 in the unit range (models.enhance.to_unit) -> denoised, same shape
Denoiser = Callable[[np.ndarray], np.ndarray]

__all__ = ["LoadedModel", "ModelLoadError", "RawBox", "load_model", "weights_digest"]


class LoadedModel:
    """A verified model on its device; see the module docstring for the contract."""

    def __init__(
        self,
        card: ModelCard,
        placement: DevicePlacement,
        sha256: str,
        network: torch.nn.Module | None = None,
        detector: Detector | None = None,
        outputs_probabilities: bool = False,
        nnunet: nnUNetPredictor | None = None,
        bundle: MonaiBundle | None = None,
        anomaly: AnomalyScorer | None = None,
        denoiser: Denoiser | None = None,
    ) -> None:
        self.card = card
        self.placement = placement
        self.sha256 = sha256
        self.network = network
        self._detector = detector
        self._outputs_probabilities = outputs_probabilities
        self.nnunet = nnunet  # an nnU-Net folder brings its own pre-processing and inference
        self.bundle = bundle  # a MONAI bundle brings its own transforms and inferer
        self._anomaly = anomaly
        self._denoiser = denoiser
        if network is not None:
            network.eval()

    def __repr__(self) -> str:
        return f"LoadedModel({self.card.name!r}, on={self.placement.used!r}, sha256={self.sha256[:12]})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities for a pre-processed batch (see the agreed interface), on the CPU."""
        if self.network is None:
            raise ModelLoadError(
                f"model {self.card.name!r} ({self.card.task}) has no forward(); use detect()"
            )
        expected = self.card.input.dims + 2
        if x.ndim != expected:
            raise ValueError(
                f"model {self.card.name!r} expects a {expected}-D batch (N, C, spatial...), got shape "
                f"{tuple(x.shape)}"
            )
        with torch.inference_mode():
            out = self.network(x.to(self.placement.used, dtype=torch.float32))
            if isinstance(out, (list, tuple)):  # deep supervision heads: the first is the output
                out = out[0]
            if not self._outputs_probabilities:
                out = torch.softmax(out.float(), dim=1)
            return out.float().cpu()

    def detect(self, images: np.ndarray, conf: float | None = None) -> list[list[RawBox]]:
        """Boxes per image for (N,H,W) or (N,H,W,3) float32 images in [0, 1] at the input size.

        ``conf`` overrides the card's confidence threshold (evaluation uses a low one for mAP).
        """
        if self._detector is None:
            raise ModelLoadError(
                f"model {self.card.name!r} ({self.card.task}) has no detect(); use forward()"
            )
        if images.ndim not in (3, 4):
            raise ValueError(
                f"detect() expects (N,H,W) or (N,H,W,3) images, got shape {images.shape}"
            )
        return self._detector(np.asarray(images, dtype=np.float32), conf)

    def anomaly_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores (N,), maps (N, H, W)) for (N, H, W) float32 images normalised at the input size."""
        if self._anomaly is None:
            raise ModelLoadError(
                f"model {self.card.name!r} ({self.card.task}) has no anomaly_maps()"
            )
        if images.ndim != 3:
            raise ValueError(f"anomaly_maps() expects (N,H,W) images, got shape {images.shape}")
        scores, maps = self._anomaly(np.asarray(images, dtype=np.float32))
        return np.asarray(scores, dtype=np.float64), np.asarray(maps, dtype=np.float32)

    def denoise(self, images: np.ndarray) -> np.ndarray:
        """Denoised (N, H, W) float32 images, given and returned in the unit range."""
        if self._denoiser is None:
            raise ModelLoadError(f"model {self.card.name!r} ({self.card.task}) has no denoise()")
        if images.ndim != 3:
            raise ValueError(f"denoise() expects (N,H,W) images, got shape {images.shape}")
        return np.asarray(self._denoiser(np.asarray(images, dtype=np.float32)), np.float32)


def weights_digest(path: Path) -> str:
    """SHA-256 of a weights file; for a folder (MONAI bundle) a digest over every file in it.

    The folder digest hashes ``relative-path NUL file-sha256 LF`` lines in sorted order, so any
    changed, added or removed file (config or weights) changes it.
    """
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(
            p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        ):
            digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
        return digest.hexdigest()
    return sha256_file(path)


def verify_weights(card: ModelCard) -> str:
    """Check the weights exist and match the card's SHA-256; return the digest."""
    path = card.weights_path
    if not path.exists():
        raise ModelLoadError(f"model {card.name!r}: weights {path} not found")
    actual = weights_digest(path)
    if actual != card.sha256:
        raise ModelLoadError(
            f"model {card.name!r}: SHA-256 mismatch for {path}: card says {card.sha256}, file is "
            f"{actual}; refusing to load (update the card only if these weights are intended)"
        )
    return actual


def load_model(card: ModelCard, device: str) -> LoadedModel:
    """Verify and load ``card``'s model on ``device`` (CPU fallback with a warning)."""
    sha = verify_weights(card)
    placement = resolve_device(device)
    try:
        # Each framework's loader is imported on demand: MONAI, timm and ultralytics are heavy
        # (seconds to import) and a node loads only the frameworks its cards name.
        if card.framework == "monai":
            from models.loaders.monai import load_monai

            return load_monai(card, placement, sha)
        if card.framework == "timm":
            from models.loaders.timm import load_timm

            return load_timm(card, placement, sha)
        if card.framework == "nnunet":
            from models.loaders.nnunet import load_nnunet

            return load_nnunet(card, placement, sha)
        if card.framework in ("sklearn", "padim"):
            from models.loaders.anomaly import load_anomaly

            return load_anomaly(card, placement, sha)
        if card.framework in ("classical", "dncnn"):
            from models.loaders.enhance import load_denoiser

            return load_denoiser(card, placement, sha)
        if card.framework == "ultralytics":
            from models.loaders.ultralytics import load_ultralytics

            return load_ultralytics(card, placement, sha)
        from models.loaders.torchscript import load_torchscript

        return load_torchscript(card, placement, sha)
    except ModelLoadError:
        raise
    except (
        RuntimeError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        OSError,
        ImportError,
    ) as exc:
        raise ModelLoadError(
            f"model {card.name!r} ({card.framework} {card.architecture}) failed to load from "
            f"{card.weights_path}: {type(exc).__name__}: {exc}"
        ) from exc


_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "network")


def _unpickle_verified(path: Path) -> Any:
    """``torch.load`` with safe unpickling first, full unpickling only when that refuses.

    Only called after :func:`verify_weights` matched the file to its card's SHA-256, so the bytes
    unpickled are exactly the ones the card's author vouched for. timm's ``train.py`` checkpoints
    need this: they carry an ``argparse.Namespace`` of the training arguments.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        log.warning(
            "%s needs full unpickling (%s); loading it because its SHA-256 matched the card",
            path.name,
            str(exc).splitlines()[0][:200],
        )
        return torch.load(path, map_location="cpu", weights_only=False)


def read_state_dict(path: Path, *, ema: bool = False) -> dict[str, Any]:
    """A state_dict from a plain, wrapped or timm ``train.py`` checkpoint, or a safetensors file.

    ``ema`` takes ``state_dict_ema`` (timm's exponential moving average of the weights) and is an
    error when the checkpoint has none. Call only on a file whose SHA-256 was verified.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        payload: Any = load_file(str(path), device="cpu")
    else:
        payload = _unpickle_verified(path)
    if isinstance(payload, dict) and ema:
        inner = payload.get("state_dict_ema")
        if not isinstance(inner, dict):
            raise ModelLoadError(
                f"{path}: the card asks for EMA weights (ema: true) but the checkpoint has no "
                f"state_dict_ema (keys: {', '.join(sorted(map(str, payload))[:10])})"
            )
        payload = inner
    elif isinstance(payload, dict):
        for key in _STATE_DICT_KEYS:
            inner = payload.get(key)
            if isinstance(inner, dict):
                payload = inner
                break
    if not isinstance(payload, dict) or not all(
        isinstance(v, torch.Tensor) for v in payload.values()
    ):
        raise ModelLoadError(f"{path} does not hold a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in payload.items()}
