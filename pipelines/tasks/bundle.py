"""Run a MONAI bundle member on a decoded series, the way the bundle's own pipeline runs it.

The series becomes what MONAI's DICOM readers make of it — a channel-less MetaTensor indexed
(column, row, frame) with the voxel-to-RAS affine and ``original_channel_dim = "no_channel"`` — so
the bundle's ``EnsureChannelFirstd``, ``Orientationd``, ``Spacingd``, intensity transforms, inferer
and ``Invertd`` run unchanged; the inverted probabilities are read back in the node's (frame, row,
column) order on the source grid.
"""

from __future__ import annotations

import numpy as np
import torch

from models.loaders.monai_bundle import MonaiBundle
from pipelines.errors import PipelineInputError
from pipelines.preprocess.decode import DecodedSeries
from pipelines.preprocess.orientation import series_as_metatensor


def bundle_probabilities(bundle: MonaiBundle, series: DecodedSeries) -> np.ndarray:
    """(labels, frames, rows, cols) probabilities on the source grid, background dropped."""
    data = bundle.preprocessing({bundle.image_key: series_as_metatensor(series)})
    image = data[bundle.image_key]
    device = next(bundle.network.parameters()).device
    with torch.no_grad():
        batch = image.unsqueeze(0).to(device)
        prediction = bundle.inferer(batch, bundle.network)
    data[bundle.pred_key] = prediction[0].detach().cpu()
    data[bundle.image_key] = image.cpu() if isinstance(image, torch.Tensor) else image
    data = bundle.to_probabilities(data)
    probabilities = torch.as_tensor(data[bundle.pred_key]).float().numpy()
    expected = (series.values.shape[2], series.values.shape[1], series.values.shape[0])
    if tuple(probabilities.shape[1:]) != expected:
        raise PipelineInputError(
            f"bundle {bundle.root.name}: its post-processing returned {tuple(probabilities.shape)}, "
            f"not the source grid (channels, {expected}); does it end with Invertd?"
        )
    return np.ascontiguousarray(probabilities[1:].transpose(0, 3, 2, 1))
