"""Device placement: where a model asked to run, and where it really runs.

A card or pipeline names ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (Apple silicon) or ``auto``. A device that does not exist
on this machine is not an error: the model runs on the CPU and the placement carries a warning, so
the report can say where each model really ran instead of the job failing at 3 a.m.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

_DEVICE_RE = re.compile(r"^(cpu|auto|cuda|mps)(?::(\d+))?$")


@dataclass(frozen=True)
class DevicePlacement:
    """The requested device, the one used, and why they differ (``None`` when they do not)."""

    requested: str
    used: str
    warning: str | None = None

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.used)


def resolve_device(requested: str) -> DevicePlacement:
    """Map a requested device to one that exists here; fall back to CPU with a warning.

    ``auto`` takes ``cuda:0`` when CUDA is available, else the CPU (no warning: that is what
    ``auto`` means). A malformed name also falls back, with a warning naming what was accepted.
    """
    text = (requested or "auto").strip().lower()
    match = _DEVICE_RE.match(text)
    if match is None:
        return _fallback(
            requested,
            f"unknown device {requested!r} (use cpu, cuda, cuda:N, mps or auto); ran on cpu",
        )
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index not in (None, "0"):
            return _fallback(requested, f"device {requested!r} is not valid; ran on cpu")
        return DevicePlacement(requested, "cpu")
    if kind == "mps":
        return _resolve_mps(requested, index)
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "auto":
        if index is not None:
            return _fallback(requested, f"device {requested!r} is not valid; ran on cpu")
        return DevicePlacement(requested, "cuda:0" if cuda_count else "cpu")
    wanted = int(index) if index is not None else 0
    if cuda_count == 0:
        return _fallback(requested, f"{requested} requested but CUDA is not available; ran on cpu")
    if wanted >= cuda_count:
        return _fallback(
            requested,
            f"{requested} requested but only {cuda_count} CUDA device(s) exist; ran on cpu",
        )
    return DevicePlacement(requested, f"cuda:{wanted}")


def _resolve_mps(requested: str, index: str | None) -> DevicePlacement:
    """Apple's Metal device: one per machine, so only ``mps`` and ``mps:0`` name it."""
    if index not in (None, "0"):
        return _fallback(
            requested, f"device {requested!r} is not valid (mps has one device); ran on cpu"
        )
    if not torch.backends.mps.is_available():
        return _fallback(requested, f"{requested} requested but MPS is not available; ran on cpu")
    return DevicePlacement(requested, "mps")


def _fallback(requested: str, warning: str) -> DevicePlacement:
    log.warning("%s", warning)
    return DevicePlacement(requested, "cpu", warning)


def configure_torch_threads(threads: int) -> None:
    """Apply ``settings.torch_threads`` (0 keeps torch's default) once per process."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def available_devices() -> list[str]:
    """The devices this process can place a model on (``cpu``, ``cuda:N``, ``mps``): what a
    worker reports in its heartbeat, so the console offers only devices some worker has."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found
