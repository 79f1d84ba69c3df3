"""Explanation and anomaly maps as a reader sees them: 0..1 display values on the source grid, a
caption saying what they show, and their jet-coloured blend over the displayed source.

One scaling per kind of map, shared by the burned-in overlay's map images (what a radiologist
sees in PACS), the PDF and the console's review toggles, so the three show the same picture:

- explanation (Grad-CAM & co.): already 0..1 per frame, 1 = what mattered most for the decision;
- anomaly: in the score's own unit (the image score is the map's maximum), scaled so the study's
  least anomalous pixel is 0 and the calibrated decision threshold is 1: red is "at or above the
  threshold", wherever it is, and a normal study never turns red.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from node.results.pmap import explanation_description
from pipelines.contract import AnomalyOutput, PipelineResult

# the blend's opacity where the map is 1 (0 where it is 0): the source stays readable under it
MAP_OPACITY = 0.6


@dataclass(frozen=True)
class MapLayer:
    """One map to show: ``role`` names it in UIDs and file names ("explanation", "anomaly")."""

    role: str
    caption: str  # "Grad-CAM for abnormal", "anomaly map (red >= threshold 9.08)"
    values: np.ndarray  # (frames, rows, cols) float32 in [0, 1], source geometry
    key_frame: int  # the frame to show when only one is shown


def jet(values: np.ndarray) -> np.ndarray:
    """The familiar blue -> cyan -> green -> yellow -> red ramp of probability maps, (..., 3)
    floats 0..1; the console's heat map PNGs and the report's explanation use the same one."""
    v = np.clip(values, 0.0, 1.0)
    red = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    green = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    blue = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return np.stack([red, green, blue], axis=-1)


def blend(shown: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(rows, cols, 3) uint8: the displayed source (grey or RGB uint8) under ``values`` (0..1) in
    jet colours, more opaque where the map is higher."""
    if shown.ndim == 2:
        shown = np.repeat(shown[:, :, None], 3, axis=2)
    v = np.clip(values, 0.0, 1.0)
    alpha = (MAP_OPACITY * v)[:, :, None]
    rgb = shown.astype(np.float32) * (1 - alpha) + jet(v) * 255.0 * alpha
    return np.asarray(np.rint(rgb).clip(0, 255).astype(np.uint8))


def anomaly_display_values(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """(frames, rows, cols) float32 0..1: 0 at the map's minimum, 1 at ``threshold`` and above
    (at the map's maximum when the threshold is not above its minimum)."""
    values = np.asarray(anomaly_map, np.float32)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, np.float32)
    low = float(finite.min())
    high = float(threshold) if threshold > low else float(finite.max())
    if high <= low:
        return np.zeros(values.shape, np.float32)
    scaled = (np.nan_to_num(values, nan=low) - low) / (high - low)
    return np.asarray(np.clip(scaled, 0.0, 1.0), np.float32)


def anomaly_caption(anomaly: AnomalyOutput) -> str:
    """ "anomaly map (red >= threshold 9.08)": what red means, on the image itself."""
    return f"anomaly map (red >= threshold {anomaly.threshold:.3g})"


def _anomaly_key_frame(anomaly: AnomalyOutput, frames: int) -> int:
    """The frame with the highest score (the study's score comes from it)."""
    scores = anomaly.frame_scores
    if len(scores) == frames and frames:
        return int(np.argmax(scores))
    return frames // 2


def map_layers(result: PipelineResult, explanation_frame: int) -> list[MapLayer]:
    """The result's maps in the order they are shown: the explanation (on ``explanation_frame``,
    the key image the PDF shows it on) and the anomaly map (on its highest-scoring frame)."""
    layers: list[MapLayer] = []
    if result.explanation is not None:
        maps = np.clip(np.asarray(result.explanation.maps, np.float32), 0.0, 1.0)
        layers.append(
            MapLayer("explanation", explanation_description(result), maps, explanation_frame)
        )
    anomaly = result.anomaly
    if anomaly is not None and anomaly.map is not None:
        values = anomaly_display_values(anomaly.map, anomaly.threshold)
        frame = _anomaly_key_frame(anomaly, values.shape[0])
        layers.append(MapLayer("anomaly", anomaly_caption(anomaly), values, frame))
    return layers
