"""The slab-wise inverse of a bundle's geometry reads what MONAI's own ``Invertd`` reads.

A small oblique series stored LPS and feet-first goes through the spleen bundle's real
``Orientationd`` (to RAS) and ``Spacingd`` (1.5 x 1.5 x 2 mm, bilinear, border); random outputs on
the network grid are mapped back both ways. The in-plane spacing is 0.75 mm, so half the voxel
centres fall exactly between two network voxels: nearest interpolation must settle those as MONAI
does, not just agree on average.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.preprocess.orientation import as_metatensor
from pipelines.tasks.bundle_inverse import affine_inverse, source_slabs

CONFIG = (
    Path(__file__).resolve().parents[2]
    / "data"
    / "monai_bundles"
    / "spleen_ct_segmentation"
    / "configs"
    / "inference.json"
)
SHAPE = (14, 36, 40)  # frames, rows, columns


def _bundle(nearest: bool) -> tuple[Any, Any]:
    """The bundle's preprocessing (without its reader) and its Invertd, ``nearest_interp`` set."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser["bundle_root"] = str(CONFIG.parents[1])
    pre = [t for t in parser["preprocessing"]["transforms"] if t["_target_"] != "LoadImaged"]
    parser["preprocessing"]["transforms"] = pre
    invert = next(t for t in parser["postprocessing"]["transforms"] if t["_target_"] == "Invertd")
    invert["nearest_interp"] = nearest
    parser["_invert"] = {"_target_": "Compose", "transforms": [invert]}
    return parser.get_parsed_content("preprocessing"), parser.get_parsed_content("_invert")


def _oblique_lps_affine() -> np.ndarray:
    """Voxel (column, row, frame) → RAS of a series tilted 0.2 rad, stored LPS, feet first."""
    tilt = np.array([[np.cos(0.2), -np.sin(0.2), 0], [np.sin(0.2), np.cos(0.2), 0], [0, 0, 1]])
    lps = np.eye(4)
    lps[:3, :3] = tilt @ np.diag([0.75, 0.75, -2.5])
    lps[:3, 3] = [10.0, 20.0, -30.0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.parametrize("nearest", [False, True])
def test_slab_inverse_reads_what_invertd_reads(nearest: bool) -> None:
    from monai.data import MetaTensor

    preprocessing, invert = _bundle(nearest)
    frames, rows, cols = SHAPE
    affine = _oblique_lps_affine()
    values = np.random.default_rng(0).random((cols, rows, frames), dtype=np.float32)
    image = preprocessing({"image": as_metatensor(values, affine, "x", False)})["image"]
    generator = torch.Generator().manual_seed(1)
    grid_shape = (3, *image.shape[1:])
    pred = (
        torch.randint(0, 7, grid_shape, generator=generator).float()
        if nearest
        else torch.rand(grid_shape, generator=generator)
    )
    expected = np.asarray(invert({"image": image, "pred": MetaTensor(pred)})["pred"])
    expected = expected.transpose(0, 3, 2, 1)  # (C, column, row, frame) → node order

    inverse = affine_inverse(image, invert, "pred", affine, (cols, rows, frames))
    assert inverse is not None  # orientation + spacing: the slab path, not Invertd
    assert inverse.mode == ("nearest" if nearest else "bilinear")
    out = np.full((3, *SHAPE), np.nan, np.float32)
    starts = []
    for start, slab in source_slabs(inverse, pred, SHAPE):
        starts.append(start)
        out[:, start : start + slab.shape[1]] = slab
    assert starts == [0]  # a small series is one slab; larger ones: see the slab test below
    if nearest:
        assert np.array_equal(out, expected)
    else:
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_slabs_put_together_are_the_whole_inverse(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.tasks.bundle_inverse as module

    preprocessing, invert = _bundle(False)
    frames, rows, cols = SHAPE
    affine = _oblique_lps_affine()
    values = np.zeros((cols, rows, frames), np.float32)
    image = preprocessing({"image": as_metatensor(values, affine, "x", False)})["image"]
    pred = torch.rand((2, *image.shape[1:]), generator=torch.Generator().manual_seed(2))
    inverse = affine_inverse(image, invert, "pred", affine, (cols, rows, frames))
    assert inverse is not None
    whole = np.concatenate([s for _, s in source_slabs(inverse, pred, SHAPE)], axis=1)
    monkeypatch.setattr(module, "_WORK_BYTES", 1)  # one frame per slab
    parts = list(source_slabs(inverse, pred, SHAPE))
    assert [start for start, _ in parts] == list(range(frames))
    np.testing.assert_array_equal(np.concatenate([s for _, s in parts], axis=1), whole)


def test_a_recorded_crop_falls_back_to_invertd() -> None:
    from monai.transforms import CenterSpatialCrop

    preprocessing, invert = _bundle(True)
    frames, rows, cols = SHAPE
    affine = _oblique_lps_affine()
    values = np.zeros((cols, rows, frames), np.float32)
    image = preprocessing({"image": as_metatensor(values, affine, "x", False)})["image"]
    cropped = CenterSpatialCrop((8, 8, 4))(image)
    assert affine_inverse(image, invert, "pred", affine, (cols, rows, frames)) is not None
    assert affine_inverse(cropped, invert, "pred", affine, (cols, rows, frames)) is None


def test_bundle_output_maps_back_without_invertd(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's BundleOutput takes the slab path (Invertd is never called) and gets what the
    bundle's Invertd gets."""
    from monai.data import MetaTensor

    from models.loaders.monai_bundle import MonaiBundle
    from pipelines.tasks.bundle import BundleOutput

    preprocessing, invert = _bundle(False)
    frames, rows, cols = SHAPE
    affine = _oblique_lps_affine()
    values = np.zeros((cols, rows, frames), np.float32)
    image = preprocessing({"image": as_metatensor(values, affine, "x", False)})["image"]
    pred = torch.rand((2, *image.shape[1:]), generator=torch.Generator().manual_seed(3))
    expected = np.asarray(invert({"image": image, "pred": MetaTensor(pred)})["pred"])
    bundle = MonaiBundle(
        root=CONFIG.parents[1],
        network=torch.nn.Identity(),
        preprocessing=preprocessing,
        inferer=lambda *a: None,
        to_probabilities=lambda d: d,
        version="",
        channel_names=(),
        invert=invert,
    )
    output = BundleOutput(bundle, {"image": image, "pred": pred}, SHAPE, affine)

    def refuse(self: BundleOutput, pred: torch.Tensor) -> np.ndarray:
        raise AssertionError("Invertd ran")

    monkeypatch.setattr(BundleOutput, "_invertd", refuse)
    np.testing.assert_allclose(output.to_source(pred), expected.transpose(0, 3, 2, 1), atol=1e-5)
