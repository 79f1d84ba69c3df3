"""3D model input: a window runs only on the voxels the down-sampling reads, with the same result."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.card import InputSpec
from pipelines.preprocess import prepare
from pipelines.preprocess.decode import DecodedSeries, FileWindow, decode_series
from pipelines.preprocess.intensity import channels_image, normalise_channels
from pipelines.preprocess.orientation import to_model_grid
from pipelines.preprocess.prepare import prepare_3d
from pipelines.preprocess.prepare import read_subset as prepare_read_subset
from pipelines.spec import PreprocessingSpec
from tests.pipelines.ct_series import write_ct_series


def _whole_volume(
    series: DecodedSeries, card_input: InputSpec, preprocessing: PreprocessingSpec
) -> torch.Tensor:
    """The model input with the window on every source voxel, then resampled."""
    images = channels_image(series, card_input.intensity, preprocessing, 1, per_frame=False)
    assert card_input.pixdim is not None
    volume, _ = to_model_grid(series, images, card_input.axcodes, card_input.pixdim)
    mean, std = card_input.intensity.mean, card_input.intensity.std
    return torch.from_numpy(normalise_channels(volume[None].numpy(), mean, std))


def _card(mode: str, axcodes: str) -> InputSpec:
    intensity = {"mode": mode, "center": 40.0, "width": 400.0, "mean": [0.5], "std": [0.25]}
    return InputSpec.model_validate(
        {
            "dims": 3,
            "spatial_size": [16, 16, 16],
            "axcodes": axcodes,
            "pixdim": [12.5, 10.0, 15.0],  # a few voxels in ten read along each axis
            "intensity": intensity,
        }
    )


@pytest.mark.parametrize("layout", ["axial-head-first", "coronal"])
@pytest.mark.parametrize("axcodes", ["RAS", "IPL"])
@pytest.mark.parametrize("voi", ["model", "pipeline", "file", "monochrome1"])
def test_windowed_input_is_the_whole_volume_windowed_then_resampled(
    tmp_path: Path, layout: str, axcodes: str, voi: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    series = decode_series(write_ct_series(tmp_path, layout))
    cut: list[tuple[np.ndarray, ...]] = []

    def recorded(whole: DecodedSeries, read: tuple[np.ndarray, ...]) -> DecodedSeries:
        cut.append(read)
        return prepare_read_subset(whole, read)  # type: ignore[arg-type]

    monkeypatch.setattr(prepare, "read_subset", recorded)
    preprocessing = PreprocessingSpec()
    if voi == "pipeline":
        preprocessing = PreprocessingSpec(voi="pipeline", window={"center": 60.0, "width": 300.0})
    elif voi == "file":  # a different window per frame: the cut keeps each frame's own
        windows = tuple(FileWindow(30.0 + i, 350.0 + 2 * i) for i in range(series.frame_count))
        series = replace(series, file_windows=windows)
        preprocessing = PreprocessingSpec(voi="file")
    elif voi == "monochrome1":
        series = replace(series, photometric="MONOCHROME1")
    card_input = _card("window", axcodes)
    prepared = prepare_3d(series, card_input, preprocessing)
    expected = _whole_volume(series, card_input, preprocessing)
    assert prepared.volume.shape == expected.shape
    assert prepared.volume.shape[2:] == prepared.grid.resampling.target_shape
    # float32 interpolation weights computed two ways: ~1e-5 of the [0, 1] window (/ std)
    torch.testing.assert_close(prepared.volume, expected, atol=1e-4, rtol=0)
    assert float(prepared.volume.std()) > 0.1  # the anatomy is there, not a flat volume
    assert len(cut) == 1 and np.prod([len(r) for r in cut[0]]) < 0.2 * series.values.size


def test_percentiles_still_see_every_source_voxel(tmp_path: Path) -> None:
    series = decode_series(write_ct_series(tmp_path, "axial-head-first"))
    card_input = _card("percentile", "RAS")
    prepared = prepare_3d(series, card_input, PreprocessingSpec())
    expected = _whole_volume(series, card_input, PreprocessingSpec())
    torch.testing.assert_close(prepared.volume, expected, atol=1e-5, rtol=0)


def test_read_indices_are_what_the_down_sampling_reads() -> None:
    from pipelines.preprocess.geometry import VolumeResampling

    resampling = VolumeResampling((30, 64, 50), (2.0, 0.7, 1.0), (5.0, 5.0, 1.0))
    read = resampling.read_indices()
    assert read is not None and len(read[2]) == 50  # an axis kept at its size is read whole
    volume = torch.rand(1, 2, 30, 64, 50, generator=torch.Generator().manual_seed(1))
    subset = volume[:, :, read[0]][:, :, :, read[1]][:, :, :, :, read[2]]
    torch.testing.assert_close(
        resampling.forward_read(subset.contiguous(), read),
        resampling.forward(volume),
        atol=1e-5,
        rtol=0,
    )
    # the down-sampling reads nothing else: voxels outside the read indices may be anything
    poisoned = torch.full_like(volume, float("nan"))
    cut = np.ix_(*read)
    poisoned[:, :, cut[0], cut[1], cut[2]] = volume[:, :, cut[0], cut[1], cut[2]]
    assert torch.equal(resampling.forward(poisoned), resampling.forward(volume))
    assert read[0].size < 30 and read[1].size < 64
