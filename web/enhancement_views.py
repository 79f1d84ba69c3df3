"""What the review page shows of an enhancement (denoising) job: the quality figures and where
each source image's denoised copy is.

A study has no noise-free reference, so its own figure is the noise σ estimated before and after
(on the result); PSNR and SSIM come from each denoiser's model card, where ``pacsnode evaluate``
measured them against clean references, beside the noisy input's on the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from core.config import Settings
from node.db.orm import Job
from web.integrations import model_cards
from web.result_views import artifact_file


@dataclass(frozen=True)
class DenoiserQuality:
    """A denoiser's PSNR/SSIM from its model card's evaluation (``pacsnode evaluate``, against
    clean references), beside the noisy input's on the same images: the figures a study itself
    cannot give, since it has no noise-free reference."""

    model: str
    dataset: str  # "heldout noisy phantoms 2d"
    psnr_db: float
    ssim: float
    input_psnr_db: float | None
    input_ssim: float | None


def denoiser_quality(settings: Settings, members: Sequence[str]) -> list[DenoiserQuality]:
    """Each member's evaluated PSNR/SSIM (none for a member whose card has no evaluation)."""
    cards = model_cards(settings)
    out: list[DenoiserQuality] = []
    for name in members:
        card = cards.get(name)
        metrics = card.metrics if card is not None else {}
        for key, value in metrics.items():
            if not (isinstance(value, dict) and "psnr_db" in value and "ssim" in value):
                continue
            comparison = metrics.get(f"comparison_{key}")
            noisy = comparison.get("noisy input") if isinstance(comparison, dict) else None
            noisy = noisy if isinstance(noisy, dict) else {}
            out.append(
                DenoiserQuality(
                    name,
                    key.replace("_", " "),
                    float(value["psnr_db"]),
                    float(value["ssim"]),
                    float(noisy["psnr_db"]) if "psnr_db" in noisy else None,
                    float(noisy["ssim"]) if "ssim" in noisy else None,
                )
            )
    return out


@lru_cache(maxsize=8)
def _denoised_cached(paths: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            cited = str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
        except (OSError, InvalidDicomError, AttributeError, IndexError):
            continue  # removed by retention, or not a derived image: no denoised view of it
        found[cited] = path
    return found


def denoised_files(settings: Settings, job: Job) -> dict[str, Path]:
    """Source SOP Instance UID -> the file of its denoised instance (the enhancement's derived
    series cites its source in Source Image Sequence); empty when the job made none."""
    paths = []
    for artifact in job.artifacts:
        if artifact.kind == "enhanced":
            try:
                paths.append(str(artifact_file(settings, artifact)))
            except FileNotFoundError:
                continue
    return {uid: Path(p) for uid, p in _denoised_cached(tuple(paths)).items()}
