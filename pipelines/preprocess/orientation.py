"""A series on the grid a 3D network was trained on, and the network's output back on the source.

A card names that grid as MONAI does (``axcodes`` + ``pixdim``). The decoded series becomes what
MONAI's DICOM readers make of it — a MetaTensor indexed (column, row, frame) with its voxel-to-RAS
affine — and MONAI's own ``Orientation`` and ``Spacing`` transforms take it to the card's grid;
their inverses (MONAI's ``Compose.inverse``, what ``Invertd`` runs for a bundle) take the
network's probabilities back to the source slices. So the same anatomy stored axial head-first,
feet-first, in reversed file order, coronal or sagittal meets the network the same way, and a MONAI
bundle (:mod:`pipelines.tasks.bundle`) and a plain 3D card share one way of reading the geometry.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipelines.preprocess.decode import DecodedSeries

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def source_spacing(series: DecodedSeries) -> tuple[float, float, float]:
    """(slice, row, column) spacing in mm; 1 mm where the source does not say."""
    row, col = series.pixel_spacing_mm or (1.0, 1.0)
    return (series.slice_spacing_mm or series.slice_thickness_mm or 1.0, row, col)


def affine_ras(series: DecodedSeries) -> np.ndarray:
    """Voxel (column, row, frame) → patient RAS mm.

    A series without slice positions or orientation (rare for volumes: secondary captures,
    stripped exports) is taken as axial with rows running posterior and columns left, at its
    spacing — what MONAI's readers assume for an image without a direction.
    """
    affine_lps = series.affine_lps
    if affine_lps is None:
        slice_mm, row_mm, col_mm = source_spacing(series)
        affine_lps = np.diag([col_mm, row_mm, slice_mm, 1.0])
    return LPS_TO_RAS @ affine_lps


def as_metatensor(array: np.ndarray, affine: np.ndarray, name: str, channel_first: bool) -> Any:
    """``array`` indexed ([channel,] column, row, frame) as a MONAI MetaTensor with ``affine``."""
    from monai.data import MetaTensor

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    affine_t = torch.as_tensor(affine, dtype=torch.float64)
    spatial = tensor.shape[1:] if channel_first else tensor.shape
    meta = {
        "original_channel_dim": 0 if channel_first else "no_channel",
        "original_affine": affine_t.clone(),
        "space": "RAS",
        "spatial_shape": np.asarray(spatial),
        "filename_or_obj": name,
    }
    return MetaTensor(tensor, affine=affine_t, meta=meta)


def series_as_metatensor(series: DecodedSeries) -> Any:
    """The series' values as MONAI's readers load them: channel-less, (column, row, frame), RAS."""
    return as_metatensor(
        series.values.transpose(2, 1, 0),
        affine_ras(series),
        series.series_instance_uid,
        channel_first=False,
    )


@dataclass
class ModelGrid:
    """How one series was put on a network's grid, so outputs can be put back on the source.

    Keeps the transforms that ran and the geometry they recorded (not the image), because MONAI's
    inverse replays exactly the recorded operations.
    """

    source_shape: tuple[int, int, int]  # frames, rows, columns
    transform: Any = None  # the MONAI Compose that ran; None: storage order, no resampling
    affine: torch.Tensor | None = None
    meta: dict[str, Any] | None = None
    applied_operations: list[Any] | None = None

    def to_source(self, maps: torch.Tensor) -> torch.Tensor:
        """(1, L, *model grid) → (1, L, frames, rows, columns) on the source slices (bilinear)."""
        if self.transform is None:
            return maps
        from monai.data import MetaTensor

        assert self.affine is not None and self.meta is not None
        meta = {k: v for k, v in self.meta.items() if k != "affine"}  # affine= sets it
        prediction = MetaTensor(maps[0], affine=self.affine.clone(), meta=meta)
        prediction.applied_operations = copy.deepcopy(self.applied_operations or [])
        back = self.transform.inverse(prediction)
        array = back.as_tensor() if isinstance(back, MetaTensor) else torch.as_tensor(back)
        return array.permute(0, 3, 2, 1)[None]  # (L, column, row, frame) → (1, L, frame, row, col)


def to_model_grid(
    series: DecodedSeries,
    images: np.ndarray,
    axcodes: str | None,
    pixdim: tuple[float, float, float] | None,
) -> tuple[torch.Tensor, ModelGrid]:
    """(frames, C, rows, cols) images of ``series`` → (C, *model grid) and the way back.

    Without ``axcodes`` the volume stays in storage order (frame, row, column) and is not
    resampled: a card that does not say how its network was trained gets what it always got.
    """
    frames, rows, cols = series.values.shape
    if axcodes is None:
        volume = torch.from_numpy(np.ascontiguousarray(images.transpose(1, 0, 2, 3)))
        return volume, ModelGrid((frames, rows, cols))
    from monai.transforms import Compose, Orientation, Spacing

    # the labels of the RAS space the MetaTensor is in (MONAI's default, stated to pin it)
    steps: list[Any] = [Orientation(axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))]
    if pixdim is not None:
        # float32 resampling: float64 (MONAI's default) would double the memory of a large CT
        steps.append(Spacing(pixdim=pixdim, mode="bilinear", dtype=np.float32))
    transform = Compose(steps)
    image = as_metatensor(
        images.transpose(1, 3, 2, 0), affine_ras(series), series.series_instance_uid, True
    )
    out = transform(image)
    grid = ModelGrid(
        source_shape=(frames, rows, cols),
        transform=transform,
        affine=out.affine.clone(),
        meta=copy.copy(out.meta),
        applied_operations=copy.deepcopy(out.applied_operations),
    )
    return out.as_tensor().float(), grid
