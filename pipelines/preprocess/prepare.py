"""Model input tensors from a decoded series, exactly as a model card asks, with their inverse maps.

These functions are public on purpose: the inference-parity test and ``bench/inference.py`` run a
bare model on the very tensor the pipeline builds, so "the pipeline gives what the model gives"
is checked, not assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch

from pipelines.errors import PipelineInputError
from pipelines.preprocess.decode import DecodedSeries
from pipelines.preprocess.geometry import Letterbox
from pipelines.preprocess.intensity import channels_image, normalise_channels
from pipelines.preprocess.orientation import ModelGrid, model_grid, onto_model_grid
from pipelines.spec import PreprocessingSpec
from pipelines.stages import stage

# a window runs on the voxels the down-sampling reads only when they are at most this fraction of
# the volume: the cut (fancy indexing) and the gathered interpolation cost more per voxel than a
# window and ``F.interpolate`` (100 x 512² CT at 0.625 mm, one core: at 5 mm 4 % of the voxels,
# 0.011 s vs 0.017 s + the window; at 3 mm 18 %, 0.043 s vs 0.022 s + the window; at 1.5 mm 69 %,
# 0.29 s vs 0.04 s + the window)
READ_SUBSET_UP_TO = 0.1


@dataclass
class Prepared2D:
    """Every frame letterboxed to the model size: a batch and its way back."""

    batch: torch.Tensor  # (frames, C, H, W) normalised (card mean/std)
    unit: np.ndarray  # (frames, C, H, W) before the card's mean/std
    letterbox: Letterbox

    @cached_property
    def unit_images(self) -> np.ndarray:
        """(frames, H, W) or (frames, H, W, 3) in [0, 1], for detectors: made when one asks
        (a copy of every frame that segmentation and classification never read)."""
        unit = self.unit[:, 0] if self.unit.shape[1] == 1 else self.unit.transpose(0, 2, 3, 1)
        return np.clip(unit, 0.0, 1.0)


@dataclass
class Prepared3D:
    """The series as one volume on the model's grid (sliding-window input) and the way back."""

    volume: torch.Tensor  # (1, C, *grid) normalised, axes as the card's axcodes say
    grid: ModelGrid


def prepare_2d(
    series: DecodedSeries, card_input: Any, preprocessing: PreprocessingSpec, per_frame: bool = True
) -> Prepared2D:
    """Frames → (N, C, H, W) for a 2D model (also used slice-wise on volumes)."""
    size = tuple(int(s) for s in card_input.spatial_size)
    if len(size) != 2:
        raise PipelineInputError(f"a 2D model needs a 2D spatial_size, got {size}")
    with stage("intensity"):
        images = channels_image(
            series, card_input.intensity, preprocessing, int(card_input.channels), per_frame
        )
    with stage("resample"):
        letterbox = Letterbox(series.shape, (size[0], size[1]))
        unit = letterbox.forward(torch.from_numpy(images)).numpy()
        normalised = normalise_channels(unit, card_input.intensity.mean, card_input.intensity.std)
    return Prepared2D(
        batch=torch.from_numpy(np.ascontiguousarray(normalised)), unit=unit, letterbox=letterbox
    )


def prepare_3d(
    series: DecodedSeries, card_input: Any, preprocessing: PreprocessingSpec
) -> Prepared3D:
    """The volume → (1, C, *grid) in the card's orientation at its spacing (when it names them).

    Intensity scaling runs on the source values (percentiles and z-scores see the acquired voxels,
    not interpolated ones); the card's mean/std runs last, on the network's grid. A window maps
    each voxel on its own, so it runs only on the voxels the down-sampling reads
    (:func:`read_subset`): the same values, for a fraction of the work.
    """
    pixdim = card_input.pixdim
    grid = model_grid(
        series,
        card_input.axcodes,
        None if pixdim is None else (float(pixdim[0]), float(pixdim[1]), float(pixdim[2])),
    )
    pointwise = card_input.intensity.mode == "window" and not series.is_color
    read = grid.in_storage.read_indices() if pointwise else None
    if (
        read is not None
        and math.prod(len(r) for r in read) > READ_SUBSET_UP_TO * series.values.size
    ):
        read = None  # cutting most of the volume out costs more than windowing all of it
    with stage("intensity"):
        images = channels_image(
            series if read is None else read_subset(series, read),
            card_input.intensity,
            preprocessing,
            int(card_input.channels),
            per_frame=False,
        )
    with stage("resample"):
        volume = onto_model_grid(grid, images, read)
        normalised = normalise_channels(
            volume[None].numpy(), card_input.intensity.mean, card_input.intensity.std
        )
    return Prepared3D(volume=torch.from_numpy(np.ascontiguousarray(normalised)), grid=grid)


def read_subset(
    series: DecodedSeries, read: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> DecodedSeries:
    """``series`` cut to the (frame, row, column) indices ``read`` — what a window needs to see of
    it: the values, the file windows and VOI LUT output of those frames (grey series only)."""
    frames, rows, cols = read
    cut = np.ix_(frames, rows, cols)
    display = series.file_voi_display
    return replace(
        series,
        values=series.values[cut],
        file_windows=tuple(series.file_windows[i] for i in frames),
        file_voi_display=None if display is None else display[cut],
        source_frames=tuple(series.source_frames[i] for i in frames),
    )


class PreparedInputs:
    """Per-run cache: members whose cards ask for the same input share one prepared tensor.

    Prepared up front (not in the member threads) so concurrent members never race on it.
    """

    def __init__(
        self, series: DecodedSeries, preprocessing: PreprocessingSpec, volumetric: bool
    ) -> None:
        self.series = series
        self.preprocessing = preprocessing
        self.volumetric = volumetric
        self._cache: dict[tuple[str, str], Prepared2D | Prepared3D] = {}

    def _key(self, card_input: Any, kind: str) -> tuple[str, str]:
        return (card_input.model_dump_json(), kind)

    def for_2d(self, card_input: Any) -> Prepared2D:
        key = self._key(card_input, "2d")
        if key not in self._cache:
            self._cache[key] = prepare_2d(
                self.series, card_input, self.preprocessing, per_frame=not self.volumetric
            )
        prepared = self._cache[key]
        assert isinstance(prepared, Prepared2D)
        return prepared

    def for_3d(self, card_input: Any) -> Prepared3D:
        key = self._key(card_input, "3d")
        if key not in self._cache:
            self._cache[key] = prepare_3d(self.series, card_input, self.preprocessing)
        prepared = self._cache[key]
        assert isinstance(prepared, Prepared3D)
        return prepared

    def warm(self, cards: list[Any]) -> None:
        for card in cards:
            if card.input.dims == 2:
                self.for_2d(card.input)
            else:
                self.for_3d(card.input)
