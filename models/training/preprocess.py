"""Apply a card's :class:`~models.card.IntensitySpec` to an image: the single definition of it.

Training and evaluation use this, and pipelines may too, so a model always sees inputs normalised
exactly as it was trained.
"""

from __future__ import annotations

import numpy as np

from models.card import IntensitySpec


def apply_intensity(image: np.ndarray, spec: IntensitySpec) -> np.ndarray:
    """Normalise one image/volume (any shape, one channel) per ``spec``; returns float32."""
    data = np.asarray(image, dtype=np.float32)
    if spec.mode == "window":
        assert spec.center is not None and spec.width is not None  # validated by IntensitySpec
        low = spec.center - spec.width / 2
        out = np.clip((data - low) / spec.width, 0.0, 1.0)
    elif spec.mode == "percentile":
        low, high = np.percentile(data, [spec.lower_percentile, spec.upper_percentile])
        out = np.clip((data - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    else:
        out = (data - data.mean()) / max(float(data.std()), 1e-6)
    return ((out - spec.mean[0]) / spec.std[0]).astype(np.float32)
