"""Many-label models in bounded memory (issue 16): slab-wise inverse mapping, small label maps,
probabilities at source resolution only where an output needs them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.card import ModelCard, sha256_file, write_card
from models.label_codes import bundle_labels
from models.loaders.monai import build_monai_network
from models.registry import ModelRegistry
from pipelines.contract import StudyInput
from pipelines.pipeline import Pipeline
from pipelines.postprocess import threshold_labels
from pipelines.preprocess.geometry import VolumeResampling
from pipelines.spec import PostprocessSpec
from pipelines.tasks import segmentation
from tests.pipelines.test_pipeline import config

ORGANS = ["background", "spleen", "kidney_right", "kidney_left", "liver", "stomach", "aorta"]


@pytest.mark.parametrize(
    ("source", "spacing", "target"),
    [
        ((37, 50, 61), (1.0, 0.7, 0.7), (3.0, 3.0, 3.0)),  # down-sampled in every axis
        ((9, 40, 40), (5.0, 0.5, 0.5), (2.0, 1.0, 1.0)),  # up-sampled across slices
        ((12, 30, 30), (2.0, 1.0, 1.0), (2.0, 2.5, 2.5)),  # in-plane only
    ],
)
def test_slab_inverse_is_the_whole_inverse(
    source: tuple[int, int, int],
    spacing: tuple[float, float, float],
    target: tuple[float, float, float],
) -> None:
    resampling = VolumeResampling(source, spacing, target)
    torch.manual_seed(0)
    maps = torch.rand(1, 5, *resampling.target_shape)
    whole = resampling.inverse(maps)
    slabs = [
        resampling.inverse_slab(maps, s, min(s + 4, source[0])) for s in range(0, source[0], 4)
    ]
    joined = torch.cat(slabs, dim=2)
    assert joined.shape == whole.shape
    assert float((joined - whole).abs().max()) <= 1e-5
    for axis in (1, 2):  # slabs along rows or columns (a reoriented grid's frame axis)
        size = source[axis]
        parts = [
            resampling.inverse_slab(maps, s, min(s + 7, size), axis) for s in range(0, size, 7)
        ]
        along = torch.cat(parts, dim=2 + axis)
        assert float((along - whole).abs().max()) <= 1e-5


def test_label_maps_use_the_smallest_integer_type() -> None:
    spec = PostprocessSpec()
    few = np.random.default_rng(0).dirichlet(np.ones(6), size=(2, 4, 4)).transpose(3, 0, 1, 2)
    assert threshold_labels(few[1:], [str(i) for i in range(5)], spec, True).dtype == np.uint8
    many = np.random.default_rng(1).dirichlet(np.ones(301), size=(2, 4, 4)).transpose(3, 0, 1, 2)
    names = [str(i) for i in range(300)]
    exclusive = threshold_labels(many[1:].astype(np.float32), names, spec, True)
    assert exclusive.dtype == np.uint16
    np.testing.assert_array_equal(exclusive, np.argmax(many, axis=0))
    assert threshold_labels(many[1:].astype(np.float32), names, spec, False).dtype == np.uint16


@pytest.fixture(scope="module")
def organ_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cheap 3D network with 7 output channels and the organ labels of the SNOMED map."""
    root = tmp_path_factory.mktemp("organs")
    args = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": len(ORGANS),
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
    }
    torch.manual_seed(5)
    network = build_monai_network("UNet", args)
    with torch.no_grad():  # sharper random logits: several organs across the field
        last = [
            m
            for m in network.modules()
            if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)
        ][-1]
        last.weight.mul_(30.0)
    folder = root / "organs"
    folder.mkdir()
    torch.save(network.state_dict(), folder / "model.pt")
    labels = [lab.model_dump(mode="json") for lab in bundle_labels(ORGANS, [], "organs")]
    card = ModelCard.model_validate(
        {
            "name": "organs",
            "version": "1",
            "task": "segmentation",
            "framework": "monai",
            "architecture": "UNet",
            "arguments": args,
            "weights": "model.pt",
            "sha256": sha256_file(folder / "model.pt"),
            "input": {
                "dims": 3,
                "spatial_size": [16, 32, 32],
                "axcodes": "SPL",
                "pixdim": [3.0, 2.0, 2.0],
                "intensity": {"mode": "window", "center": 40.0, "width": 400.0},
            },
            "labels": labels,
            "device_uid": "2.25.160016",
        }
    )
    write_card(card, folder / "card.yaml")
    return root


def _run(models: Path, study: StudyInput, seg_type: str) -> object:
    task = {
        "members": [{"model": "organs", "device": "cpu"}],
        "postprocess": {"min_component_pixels": 1, "fill_holes": False, "max_components": 10000},
    }
    cfg = config(3, {"segmentation": task}, ["CT"], outputs={"seg_type": seg_type})
    return Pipeline(cfg, ModelRegistry(models)).run(study)


def test_slab_wise_ensemble_equals_the_whole_volume_one(
    organ_models: Path, ct_study: StudyInput, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = _run(organ_models, ct_study, "FRACTIONAL")  # probabilities kept, for the SEG
    monkeypatch.setattr(segmentation, "SLAB_BYTES", 3 * 48 * 48 * 4 * 6)  # 3-slice slabs
    monkeypatch.setattr(segmentation, "KEEP_PROBABILITIES_BYTES", 0)
    slabbed = _run(organ_models, ct_study, "BINARY")
    a, b = whole.segmentation, slabbed.segmentation  # type: ignore[attr-defined]
    assert a.probabilities is not None and a.probabilities.shape[0] == len(ORGANS) - 1
    assert b.probabilities is None  # not kept: no output needs them
    assert len(np.unique(a.label_map)) >= 3  # several organs: the arg-max varies
    assert float((a.label_map == b.label_map).mean()) >= 0.9999
    assert b.heat is not None
    assert float(np.abs(b.heat - a.probabilities.max(axis=0)).max()) <= 1e-5
    assert slabbed.findings == ()  # type: ignore[attr-defined]
    assert [s.tracking_id for s in slabbed.structures] == [  # type: ignore[attr-defined]
        s.tracking_id
        for s in whole.structures  # type: ignore[attr-defined]
    ]
