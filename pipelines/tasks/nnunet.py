"""Run an nnU-Net v2 member on a decoded series through nnU-Net's own predictor.

nnU-Net does not reorient: it expects the array and spacing as its image reader gave them at
training time, (channel, z, y, x) with spacing (z, y, x) — SimpleITK's order. The node's decoded
series is exactly that for SimpleITK's DICOM series reader: slices sorted along the normal, then
rows, then columns. nnU-Net crops, normalises, resamples, infers and maps its softmax back to
this grid itself (``predict_single_npy_array``), so the probabilities come back on the source
slices with no resampling by the node.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipelines.errors import PipelineInputError
from pipelines.preprocess.decode import DecodedSeries


def nnunet_input(series: DecodedSeries) -> tuple[np.ndarray, dict[str, list[float]]]:
    """The series as nnU-Net's SimpleITK reader gives it: (1, z, y, x) float32 and its spacing."""
    if series.is_color:
        raise PipelineInputError(
            f"series {series.series_instance_uid}: nnU-Net models take grey-scale volumes"
        )
    if series.pixel_spacing_mm is None or series.slice_spacing_mm is None:
        raise PipelineInputError(
            f"series {series.series_instance_uid}: an nnU-Net model needs the pixel spacing and "
            "the slice spacing (its pre-processing resamples to the plans' spacing)"
        )
    row_mm, col_mm = series.pixel_spacing_mm
    spacing = [float(series.slice_spacing_mm), float(row_mm), float(col_mm)]
    return series.values[None].astype(np.float32, copy=False), {"spacing": spacing}


def nnunet_probabilities(predictor: Any, series: DecodedSeries) -> np.ndarray:
    """(labels, frames, rows, cols) softmax probabilities on the source grid, background dropped."""
    channels = len(predictor.dataset_json.get("channel_names", {"0": ""}))
    if channels != 1:
        raise PipelineInputError(
            f"nnU-Net model expects {channels} input channels; the node feeds one series"
        )
    volume, properties = nnunet_input(series)
    threads = torch.get_num_threads()  # nnU-Net sets its own thread count while it runs
    try:
        _, probabilities = predictor.predict_single_npy_array(volume, properties, None, None, True)
    finally:
        torch.set_num_threads(threads)
    probabilities = np.asarray(probabilities)
    if probabilities.shape[1:] != series.values.shape:
        raise PipelineInputError(
            f"nnU-Net returned probabilities of shape {probabilities.shape}, not the source grid "
            f"{series.values.shape}"
        )
    return np.ascontiguousarray(probabilities[1:], dtype=np.float32)
