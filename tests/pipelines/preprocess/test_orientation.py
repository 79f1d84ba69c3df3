"""The 3D model grid: MONAI's Orientation and the node's resampling, and their way back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.preprocess.decode import DecodedSeries, decode_series
from pipelines.preprocess.orientation import affine_ras, to_model_grid
from tests.pipelines.ct_series import write_ct_series


@pytest.fixture(scope="module")
def axial(tmp_path_factory: pytest.TempPathFactory) -> DecodedSeries:
    return decode_series(write_ct_series(tmp_path_factory.mktemp("ct"), "axial-head-first"))


def _images(series: DecodedSeries) -> np.ndarray:
    return series.values[:, None].astype(np.float32)  # (frames, 1, rows, cols)


def test_without_axcodes_the_volume_stays_in_storage_order(axial: DecodedSeries) -> None:
    volume, grid = to_model_grid(axial, _images(axial), None, None)
    assert torch.equal(volume[0], torch.from_numpy(axial.values))
    maps = torch.rand(1, 2, *axial.values.shape)
    assert torch.equal(grid.to_source(maps), maps)


def test_axcodes_name_where_each_network_axis_points(axial: DecodedSeries) -> None:
    """An axial series sorted by position runs superior, posterior, left (SPL) by frame, row,
    column; IPL is the same volume upside down and RAS the MONAI-reader order, mirrored in-plane."""
    spl, _ = to_model_grid(axial, _images(axial), "SPL", None)
    assert torch.equal(spl[0], torch.from_numpy(axial.values))
    ipl, _ = to_model_grid(axial, _images(axial), "IPL", None)
    assert torch.equal(ipl[0], torch.from_numpy(axial.values[::-1].copy()))
    ras, _ = to_model_grid(axial, _images(axial), "RAS", None)
    expected = axial.values.transpose(2, 1, 0)[::-1, ::-1, :]
    assert torch.equal(ras[0], torch.from_numpy(expected.copy()))


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PIR"])
def test_reorientation_alone_maps_back_exactly(axial: DecodedSeries, axcodes: str) -> None:
    volume, grid = to_model_grid(axial, _images(axial), axcodes, None)
    back = grid.to_source(volume[None])
    assert torch.equal(back[0, 0], torch.from_numpy(axial.values))


def test_resampling_reaches_the_pixdim_and_comes_back(axial: DecodedSeries) -> None:
    # the series: 2.5 mm columns (x) and rows (y), 3 mm slices (z); 48 x 48 x 20 voxels
    volume, grid = to_model_grid(axial, _images(axial), "RAS", (5.0, 1.25, 6.0))
    assert tuple(volume.shape[1:]) == (24, 96, 10)  # the field of view at the pixdim
    mask = (axial.values > 100).astype(np.float32)  # the organ
    on_grid, _ = to_model_grid(axial, mask[:, None], "RAS", (5.0, 1.25, 6.0))
    back = grid.to_source(on_grid[None])[0, 0].numpy()
    assert back.shape == axial.values.shape
    assert ((back >= 0.5) == (mask >= 0.5)).mean() > 0.98


def test_a_series_without_positions_is_read_as_axial_at_its_spacing(axial: DecodedSeries) -> None:
    from dataclasses import replace

    bare = replace(axial, affine_lps=None)
    np.testing.assert_allclose(np.diag(affine_ras(bare)), [-2.5, -2.5, 3.0, 1.0])
    spl, _ = to_model_grid(bare, _images(bare), "SPL", None)
    assert torch.equal(spl[0], torch.from_numpy(axial.values))


def test_source_geometry_written_as_tests_expect(tmp_path: Path) -> None:
    """Guards the fixture: feet-first slices decode to the same stack as head-first ones."""
    feet = decode_series(write_ct_series(tmp_path / "feet", "axial-feet-first"))
    head = decode_series(write_ct_series(tmp_path / "head", "axial-head-first"))
    np.testing.assert_array_equal(feet.values, head.values)


@pytest.mark.parametrize("layout", ["axial-head-first", "axial-feet-first", "coronal", "sagittal"])
@pytest.mark.parametrize(("axcodes", "pixdim"), [("RAS", (5.0, 1.25, 6.0)), ("IPL", None)])
def test_slabs_of_the_way_back_are_the_whole_way_back_cut(
    tmp_path: Path, layout: str, axcodes: str, pixdim: tuple[float, float, float] | None
) -> None:
    """Many-label outputs go back slab by slab (bounded memory): the same voxels as at once."""
    series = decode_series(write_ct_series(tmp_path, layout))
    volume, grid = to_model_grid(series, _images(series), axcodes, pixdim)
    maps = torch.rand(1, 3, *volume.shape[1:], generator=torch.Generator().manual_seed(0))
    whole = grid.to_source(maps)
    frames = series.values.shape[0]
    cuts = [0, 1, frames // 3, frames - 2, frames]
    slabs = [grid.to_source_slab(maps, a, b) for a, b in zip(cuts, cuts[1:], strict=False)]
    torch.testing.assert_close(torch.cat(slabs, dim=2), whole, atol=1e-5, rtol=0)


def _oriented_then_resampled(
    series: DecodedSeries, images: np.ndarray, axcodes: str, pixdim: tuple[float, float, float]
) -> torch.Tensor:
    """The model-grid volume as MONAI's Orientation on the source volume, then resampling, make
    it: what :func:`to_model_grid` computes without flipping the source-resolution volume."""
    from monai.transforms import Orientation

    from pipelines.preprocess.geometry import VolumeResampling
    from pipelines.preprocess.orientation import as_metatensor

    orientation = Orientation(axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))
    view = torch.from_numpy(images).permute(1, 3, 2, 0)
    oriented = orientation(as_metatensor(view, affine_ras(series), "s", True))
    spacing = np.linalg.norm(oriented.affine.numpy()[:3, :3], axis=0)
    shape = tuple(int(n) for n in oriented.shape[1:])
    resampling = VolumeResampling(shape, tuple(float(s) for s in spacing), pixdim)  # type: ignore[arg-type]
    return resampling.forward(oriented.as_tensor().float().contiguous()[None])[0]


@pytest.mark.parametrize("layout", ["axial-head-first", "axial-feet-first", "coronal", "sagittal"])
@pytest.mark.parametrize("axcodes", ["RAS", "IPL", "PIR"])
def test_resampling_before_reorienting_gives_the_oriented_resampled_volume(
    tmp_path: Path, layout: str, axcodes: str
) -> None:
    series = decode_series(write_ct_series(tmp_path, layout))
    images = _images(series)
    pixdim = (5.0, 1.25, 6.0)
    volume, grid = to_model_grid(series, images, axcodes, pixdim)
    expected = _oriented_then_resampled(series, images, axcodes, pixdim)
    assert volume.shape == expected.shape and volume.is_contiguous()
    # HU values; PyTorch computes the interpolation weights in float32, so a flipped grid's
    # weights agree to ~1e-6: a few thousandths of a HU apart, far below any window's resolution
    torch.testing.assert_close(volume, expected, atol=1e-2, rtol=1e-4)
    assert tuple(volume.shape[1:]) == grid.resampling.target_shape
