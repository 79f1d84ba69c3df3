"""Intensity: original values → the [0, 1] (or z-scored) image a model card asks for.

The VOI source is the pipeline's choice (:class:`pipelines.spec.PreprocessingSpec`): the card's
own window/percentile/z-score (default, as the model was trained), the file's VOI, or a fixed
pipeline window. MONOCHROME1 is inverted after the VOI so "bright = dense" for every model, as
it is for MONOCHROME2 data. Colour sources give RGB, or luminance for one-channel models.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from pipelines.preprocess.decode import DecodedSeries
from pipelines.preprocess.percentiles import percentiles
from pipelines.spec import PreprocessingSpec


class IntensityLike(Protocol):
    """The fields of ``models.card.IntensitySpec`` this module reads."""

    mode: str
    center: float | None
    width: float | None
    lower_percentile: float
    upper_percentile: float


def dicom_linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear VOI function, scaled to [0, 1]."""
    if width <= 1:
        return (values > center - 0.5).astype(np.float32)
    out = values - (center - 0.5)  # the one new array; the rest in place (same arithmetic)
    out /= width - 1
    out += 0.5
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def simple_window(
    values: np.ndarray, center: float, width: float, out: np.ndarray | None = None
) -> np.ndarray:
    """center ± width/2 → [0, 1], the convention of model cards and training code.

    ``out``: a float32 array to write the result to (a frame of the stacked result)."""
    return _unit_scaled(values, center - width / 2.0, width, out)


def _unit_scaled(
    values: np.ndarray, low: float, scale: float, out: np.ndarray | None
) -> np.ndarray:
    """``(values - low) / scale`` clipped to [0, 1] as float32, into ``out`` when given.

    A volume goes a frame at a time (the arithmetic stays in cache instead of three passes over
    a volume-sized temporary); the clip writes into the float32 result and casts on the way.
    Element by element the arithmetic is the one of the whole array at once (same operands,
    same types), so the values are too.
    """
    if out is None:
        out = np.empty(values.shape, np.float32)
    if values.ndim == 3:
        for frame, frame_out in zip(values, out, strict=True):
            _unit_scaled(frame, low, scale, frame_out)
        return out
    scaled = values - low  # the one new array; the rest in place
    scaled /= scale
    return np.clip(scaled, 0.0, 1.0, out=out, casting="unsafe")


def percentile_range(
    values: np.ndarray, lower: float, upper: float, out: np.ndarray | None = None
) -> np.ndarray:
    """[lower, upper] percentiles (:func:`percentiles`) → [0, 1] (``out``: as
    :func:`simple_window`)."""
    low, high = percentiles(values, [lower, upper])
    if high <= low:
        if out is None:
            return np.zeros_like(values, dtype=np.float32)
        out[...] = 0.0
        return out
    return _unit_scaled(values, low, high - low, out)


def zscore(values: np.ndarray) -> np.ndarray:
    std = float(values.std())
    return ((values - float(values.mean())) / (std if std > 0 else 1.0)).astype(np.float32)


def _card_mapping(
    values: np.ndarray, intensity: IntensityLike, out: np.ndarray | None = None
) -> np.ndarray:
    if intensity.mode == "window":
        assert intensity.center is not None and intensity.width is not None
        return simple_window(values, intensity.center, intensity.width, out)
    if intensity.mode == "zscore":
        scores = zscore(values)
        if out is None:
            return scores
        out[...] = scores
        return out
    return percentile_range(values, intensity.lower_percentile, intensity.upper_percentile, out)


def grey_image(
    series: DecodedSeries,
    intensity: IntensityLike,
    preprocessing: PreprocessingSpec,
    per_frame: bool,
) -> np.ndarray:
    """(frames, rows, cols) float32 after VOI and MONOCHROME1 inversion.

    ``per_frame``: percentile/z-score statistics per image (2D inputs) or over the volume (3D).
    """
    values = series.values
    if series.is_color:
        assert series.rgb is not None
        return (series.rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)
    out: np.ndarray | None = None
    if preprocessing.voi == "pipeline" and preprocessing.window is not None:
        out = dicom_linear_window(values, preprocessing.window.center, preprocessing.window.width)
    elif preprocessing.voi == "file" and series.file_voi_display is not None:
        out = series.file_voi_display
    elif preprocessing.voi == "file" and all(w is not None for w in series.file_windows):
        out = np.stack(
            [
                dicom_linear_window(frame, w.center, w.width)
                for frame, w in zip(values, series.file_windows, strict=True)
                if w is not None
            ]
        )
    if out is None:
        if per_frame:
            out = np.empty(values.shape, np.float32)
            for index, frame in enumerate(values):
                _card_mapping(frame, intensity, out[index])
        else:
            out = _card_mapping(values, intensity)
    if series.photometric == "MONOCHROME1":
        out = -out if intensity.mode == "zscore" and preprocessing.voi == "model" else 1.0 - out
    return out.astype(np.float32, copy=False)


def channels_image(
    series: DecodedSeries,
    intensity: IntensityLike,
    preprocessing: PreprocessingSpec,
    channels: int,
    per_frame: bool,
) -> np.ndarray:
    """(frames, channels, rows, cols): RGB kept for 3-channel models, grey repeated otherwise."""
    if channels == 3 and series.is_color:
        assert series.rgb is not None
        return np.ascontiguousarray(series.rgb.transpose(0, 3, 1, 2), dtype=np.float32)
    grey = grey_image(series, intensity, preprocessing, per_frame)[:, np.newaxis]
    return np.repeat(grey, channels, axis=1) if channels > 1 else grey


def normalise_channels(batch: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """(x - mean) / std per channel (a single value applies to every channel)."""
    channels = batch.shape[1]
    m = np.asarray(mean if len(mean) == channels else mean[:1] * channels, dtype=np.float32)
    s = np.asarray(std if len(std) == channels else std[:1] * channels, dtype=np.float32)
    shape = (1, channels) + (1,) * (batch.ndim - 2)
    out = batch - m.reshape(shape)  # the one new array; the division in place (same arithmetic)
    out /= s.reshape(shape)
    return out
