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

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def series_as_metatensor(series: DecodedSeries) -> torch.Tensor:
    """The series as MONAI's readers load it: (i, j, k) = (column, row, frame), RAS affine."""
    from monai.data import MetaTensor

    if series.affine_lps is None:
        raise PipelineInputError(
            f"series {series.series_instance_uid}: a MONAI bundle needs each slice's position, "
            "the image orientation and the pixel spacing"
        )
    affine = torch.as_tensor(LPS_TO_RAS @ series.affine_lps, dtype=torch.float64)
    array = torch.from_numpy(np.ascontiguousarray(series.values.transpose(2, 1, 0)))
    meta = {
        "original_channel_dim": "no_channel",
        "original_affine": affine.clone(),
        "space": "RAS",
        "spatial_shape": np.asarray(array.shape),
        "filename_or_obj": series.series_instance_uid,
    }
    return MetaTensor(array, affine=affine, meta=meta)


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
