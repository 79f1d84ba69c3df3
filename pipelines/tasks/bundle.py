"""Run a MONAI bundle member on a decoded series, the way the bundle's own pipeline runs it.

The series becomes what MONAI's DICOM readers make of it — a channel-less MetaTensor indexed
(column, row, frame) with the voxel-to-RAS affine and ``original_channel_dim = "no_channel"`` — so
the bundle's ``EnsureChannelFirstd``, ``Orientationd``, ``Spacingd``, intensity transforms, inferer
and ``Invertd`` run unchanged.

The network's output stays on the network's grid (:class:`BundleOutput`), after the bundle's
post-processing up to its discretiser (the softmax), and is mapped back to the source grid only as
far as an output needs it, a few channels at a time: the inverse of a spatial transform treats
every channel alike, so a chunk of channels inverted alone is exactly those channels of the whole
inverse. Where the recorded transforms are an orientation and a spacing (every bundle seen so far)
the inverse is one affine map, sampled a slab of source frames at a time
(:mod:`pipelines.tasks.bundle_inverse`); anything else runs the bundle's own ``Invertd``, which
resamples the whole source grid at once in float64 (about 4 GB per channel on a 300 x 512² CT).
A 105-channel bundle on a 300 x 512² CT would need 33 GB of float32 probabilities at source
resolution; its label map is 79 MB.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.loaders.monai_bundle import MonaiBundle
from pipelines.errors import PipelineInputError
from pipelines.preprocess.decode import DecodedSeries
from pipelines.preprocess.orientation import affine_ras, series_as_metatensor
from pipelines.tasks.bundle_inverse import AffineInverse, affine_inverse, source_slabs


@dataclass
class BundleOutput:
    """A bundle member's channels (background first) on the network's grid, with the image whose
    recorded transforms ``Invertd`` replays backwards."""

    bundle: MonaiBundle
    data: dict[str, Any]
    source_shape: tuple[int, int, int]  # frames, rows, columns
    # the series' voxel (column, row, frame) → RAS affine; None: only Invertd maps back
    source_affine: np.ndarray | None = None

    @property
    def channels(self) -> int:
        return int(self.data[self.bundle.pred_key].shape[0])

    def _source_bytes(self) -> int:
        frames, rows, cols = self.source_shape
        return frames * rows * cols * 4

    def _affine_inverse(self) -> AffineInverse | None:
        bundle = self.bundle
        if bundle.invert is None:
            return None
        frames, rows, cols = self.source_shape
        image = self.data[bundle.image_key]
        return affine_inverse(
            image, bundle.invert, bundle.pred_key, self.source_affine, (cols, rows, frames)
        )

    def source_slabs(self, pred: torch.Tensor) -> Iterator[tuple[int, np.ndarray]]:
        """(first frame, (C, frames, rows, columns) float32) covering the source grid: slab by
        slab where the recorded transforms are one affine map, else one slab from ``Invertd``."""
        inverse = self._affine_inverse()
        if inverse is not None:
            yield from source_slabs(inverse, _plain(pred), self.source_shape)
        else:
            yield 0, self._invertd(pred)

    def to_source(self, pred: torch.Tensor) -> np.ndarray:
        """(C, *network grid) → (C, frames, rows, columns) float32 on the source grid."""
        inverse = self._affine_inverse()
        if inverse is None:
            return self._invertd(pred)
        out = np.empty((int(pred.shape[0]), *self.source_shape), np.float32)
        for start, slab in source_slabs(inverse, _plain(pred), self.source_shape):
            out[:, start : start + slab.shape[1]] = slab
        return out

    def _invertd(self, pred: torch.Tensor) -> np.ndarray:
        """:meth:`to_source` by the bundle's own ``Invertd`` (a view in the node's order)."""
        from monai.data import MetaTensor

        bundle = self.bundle
        if not isinstance(pred, MetaTensor):  # Invertd reads the recorded transforms off it
            pred = MetaTensor(pred)
        if bundle.invert is not None:
            pred = bundle.invert(
                {bundle.image_key: self.data[bundle.image_key], bundle.pred_key: pred}
            )[bundle.pred_key]
        array = torch.as_tensor(pred).float().numpy()
        frames, rows, cols = self.source_shape
        if tuple(array.shape[1:]) != (cols, rows, frames):
            raise PipelineInputError(
                f"bundle {bundle.root.name}: its post-processing returned {tuple(array.shape)}, "
                f"not the source grid (channels, {(cols, rows, frames)}); does it end with Invertd?"
            )
        return array.transpose(0, 3, 2, 1)

    def chunks(self, first: int, budget: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first channel, (c, frames, rows, columns)) on the source grid, channels ``first``.. in
        chunks of at most ``budget`` bytes (one channel at least)."""
        step = max(1, budget // self._source_bytes())
        pred = self.data[self.bundle.pred_key]
        for start in range(first, self.channels, step):
            yield start, self.to_source(pred[start : start + step])

    def probabilities(self, budget: int) -> np.ndarray:
        """(labels, frames, rows, columns) float32 on the source grid, background dropped: the
        output itself plus one chunk in memory."""
        out = np.empty((self.channels - 1, *self.source_shape), np.float32)
        for start, chunk in self.chunks(1, budget):
            out[start - 1 : start - 1 + chunk.shape[0]] = chunk
        return out

    def label_map_and_heat(
        self, dtype: type[np.unsignedinteger], budget: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The bundle's arg-max label map (``dtype``) and the heat map (the highest label
        probability per voxel, float32) on the source grid, without all channels there at once.

        A bundle that discretises before inverting (wholeBody_ct_segmentation) gets exactly what it
        saves: its own ``AsDiscreted`` on the network's grid, then the inverse of that one
        channel (and of the heat channel beside it), written a slab of frames at a time straight
        into the label map and heat map. One that inverts first (spleen_ct_segmentation)
        gets the arg-max of its inverted probabilities, decided one chunk of channels at a time.
        """
        bundle = self.bundle
        pred = self.data[bundle.pred_key]
        if bundle.discretise_first and bundle.discretise is not None:
            winner = bundle.discretise({bundle.pred_key: pred})[bundle.pred_key]
            heat = _plain(pred[1:]).amax(dim=0, keepdim=True)
            label_map = np.empty(self.source_shape, dtype)
            heat_map = np.empty(self.source_shape, np.float32)
            both = torch.cat([_plain(winner).float(), heat.float()])
            for start, slab in self.source_slabs(both):
                label_map[start : start + slab.shape[1]] = slab[0]
                heat_map[start : start + slab.shape[1]] = slab[1]
            return label_map, heat_map
        label_map = np.zeros(self.source_shape, dtype)
        best = np.empty(self.source_shape, np.float32)
        heat_map = np.empty(self.source_shape, np.float32)
        for start, chunk in self.chunks(0, budget):
            for offset, channel in enumerate(chunk):
                index = start + offset
                if index == 0:  # background
                    best[...] = channel
                    continue
                if index == 1:
                    heat_map[...] = channel
                else:
                    np.maximum(heat_map, channel, out=heat_map)
                better = channel > best  # a tie stays with the earlier channel, as torch decides
                label_map[better] = index
                np.maximum(best, channel, out=best)
        return label_map, heat_map


def _plain(tensor: Any) -> torch.Tensor:
    """A MetaTensor's data as a plain tensor (no metadata carried into arithmetic)."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else torch.as_tensor(tensor)


def bundle_output(bundle: MonaiBundle, series: DecodedSeries) -> BundleOutput:
    """The bundle's pre-processing, inferer and post-processing up to its discretiser, on the
    network's grid."""
    data = bundle.preprocessing({bundle.image_key: series_as_metatensor(series)})
    image = data[bundle.image_key]
    device = next(bundle.network.parameters()).device
    with torch.no_grad():
        batch = image.unsqueeze(0).to(device)
        prediction = bundle.inferer(batch, bundle.network)
        del batch
    data[bundle.pred_key] = prediction[0].detach().cpu()
    del prediction
    data[bundle.image_key] = image.cpu() if isinstance(image, torch.Tensor) else image
    data = bundle.to_probabilities(data)
    frames, rows, cols = series.values.shape
    source_affine = np.asarray(affine_ras(series), dtype=np.float64)
    return BundleOutput(bundle, data, (int(frames), int(rows), int(cols)), source_affine)


def bundle_probabilities(bundle: MonaiBundle, series: DecodedSeries, budget: int) -> np.ndarray:
    """(labels, frames, rows, cols) probabilities on the source grid, background dropped."""
    return bundle_output(bundle, series).probabilities(budget)
