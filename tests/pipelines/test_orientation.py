"""A plain (non-bundle) 3D card runs in the orientation and spacing its card declares.

The volume is a real MR (``brain1`` of ../shared/data/labelled-volumes, block-averaged in plane to
keep the test quick), stored as DICOM axial head-first, axial feet-first, with reversed file
order, coronal and sagittal: the very same voxels in five storage orders. The network is a seeded
random 3D UNet whose output bias is shifted so about half the head is "lesion" — random kernels
have no symmetry, so any orientation the node got wrong would show. Its card says ``axcodes: RAS``
and an anisotropic ``pixdim``; the node's SEG label map, read back in patient space, must be the
same whatever the storage order. The same weights under a card without ``axcodes`` (the network
fed the storage order, as before) do not pass, which shows the test can fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.card import InputSpec, ModelCard, write_card
from models.loaders import weights_digest
from models.loaders.monai import build_monai_network
from models.registry import ModelRegistry
from pipelines.contract import SourceSeries, StudyInput
from pipelines.pipeline import Pipeline
from pipelines.preprocess.decode import decode_series
from pipelines.preprocess.prepare import prepare_3d
from pipelines.spec import PreprocessingSpec
from tests.conftest import SHARED_DATA
from tests.pipelines.ct_series import labels_by_position, write_lattice_series
from tests.pipelines.test_pipeline import config

pytestmark = pytest.mark.slow

MR_VOLUME = SHARED_DATA / "labelled-volumes" / "brain1_image.nrrd"
STORAGE = ["axial-head-first", "axial-feet-first", "reversed-files", "coronal", "sagittal"]
ARGUMENTS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 0,
}
LESION = {
    "value": 1,
    "name": "lesion",
    "category": {
        "value": "49755003",
        "scheme": "SCT",
        "meaning": "Morphologically Altered Structure",
    },
    "type": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"},
}
ORIENTED_INPUT = {
    "dims": 3,
    "spatial_size": [32, 32, 32],
    "axcodes": "RAS",
    "pixdim": [2.5, 3.5, 4.0],  # x, y, z: resampled on every axis, differently per axis
}


@pytest.fixture(scope="module")
def mr_lattice() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """brain1 as values[x, y, z] on an LPS lattice: 64 x 64 x 25 voxels of 3.125² x 6.5 mm."""
    if not MR_VOLUME.is_file():
        pytest.skip(f"sample data missing: {MR_VOLUME} (see /work/shared/data/README.md)")
    import nrrd

    data, _header = nrrd.read(str(MR_VOLUME))
    x, y, z = data.shape
    small = data.astype(np.float32).reshape(x // 4, 4, y // 4, 4, z).mean(axis=(1, 3))
    return np.round(small), np.array([-100.0, -100.0, -78.0]), np.array([3.125, 3.125, 6.5])


def _series(root: Path, storage: str, lattice: tuple[np.ndarray, ...]) -> SourceSeries:
    values, start, step = lattice
    plane = "axial-head-first" if storage == "reversed-files" else storage
    return write_lattice_series(
        root / storage,
        plane,
        values,
        start,
        step,
        modality="MR",
        reverse_files=storage == "reversed-files",
    )


def _write_card(
    models: Path, name: str, uid: str, weights: Path, card_input: dict[str, Any]
) -> None:
    card = ModelCard.model_validate(
        {
            "name": name,
            "version": "1",
            "task": "segmentation",
            "framework": "monai",
            "architecture": "UNet",
            "arguments": ARGUMENTS,
            "weights": str(weights),
            "sha256": weights_digest(weights),
            "input": card_input,
            "labels": [LESION],
            "device_uid": uid,
        }
    )
    write_card(card, models / name / "card.yaml")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, mr_lattice: Any) -> Path:
    """One seeded random UNet, calibrated so about half the field is foreground, under two cards."""
    from monai.inferers import sliding_window_inference

    root = tmp_path_factory.mktemp("orientation-models")
    torch.manual_seed(7)
    network = build_monai_network("UNet", ARGUMENTS).eval()
    base = decode_series(_series(root / "calibration", "axial-head-first", mr_lattice))
    volume = prepare_3d(base, InputSpec.model_validate(ORIENTED_INPUT), PreprocessingSpec())
    with torch.no_grad():
        logits = sliding_window_inference(volume.volume, (32, 32, 32), 2, network, overlap=0.25)
        last = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d)][-1]
        assert isinstance(logits, torch.Tensor)
        last.bias[1] -= float((logits[0, 1] - logits[0, 0]).median())  # type: ignore[index]
    weights = root / "model.pt"
    torch.save(network.state_dict(), weights)
    models = root / "models"
    _write_card(models, "oriented-unet", "2.25.71001", weights, ORIENTED_INPUT)
    storage_input = {"dims": 3, "spatial_size": [32, 32, 32]}
    _write_card(models, "storage-order-unet", "2.25.71002", weights, storage_input)
    return models


def _labels_in_patient_space(
    models: Path, model: str, series: SourceSeries, lattice: Any
) -> dict[tuple[int, ...], int]:
    task = {
        "members": [{"model": model, "device": "cpu"}],
        "postprocess": {
            "min_component_mm3": 0,
            "min_component_mm2": 0,
            "min_component_pixels": 1,
            "fill_holes": False,
            "max_components": 100_000,  # keep every speck: which of equal-sized ones survive
            # a cap depends on the storage order, which is not what this test is about
        },
    }
    study = StudyInput(study_instance_uid="1.2.3", series=(series,))
    result = Pipeline(config(3, {"segmentation": task}, ["MR"]), ModelRegistry(models)).run(study)
    assert result.segmentation is not None
    affine = decode_series(series).affine_lps
    assert affine is not None
    return labels_by_position(result.segmentation.label_map, affine, lattice[1], lattice[2])


def _dice(a: dict[tuple[int, ...], int], b: dict[tuple[int, ...], int]) -> float:
    assert a.keys() == b.keys()
    x = np.array([a[k] for k in a]) > 0
    y = np.array([b[k] for k in a]) > 0
    return 2 * float((x & y).sum()) / float(x.sum() + y.sum())


def test_the_same_mr_in_any_storage_order_gives_the_same_segmentation(
    models_dir: Path, mr_lattice: Any, tmp_path: Path
) -> None:
    maps = {
        storage: _labels_in_patient_space(
            models_dir, "oriented-unet", _series(tmp_path, storage, mr_lattice), mr_lattice
        )
        for storage in STORAGE
    }
    base = maps["axial-head-first"]
    foreground = float(np.mean([v > 0 for v in base.values()]))
    assert 0.2 < foreground < 0.8, foreground  # a spatially varying answer, not a constant
    dice = {storage: _dice(base, maps[storage]) for storage in STORAGE[1:]}
    assert min(dice.values()) >= 0.99, dice


def test_a_card_without_axcodes_is_fed_the_storage_order(
    models_dir: Path, mr_lattice: Any, tmp_path: Path
) -> None:
    """The contrast that gives the test above its teeth: storage order differs between planes."""
    maps = {
        storage: _labels_in_patient_space(
            models_dir, "storage-order-unet", _series(tmp_path, storage, mr_lattice), mr_lattice
        )
        for storage in ("axial-head-first", "coronal", "sagittal")
    }
    base = maps["axial-head-first"]
    assert min(_dice(base, maps[s]) for s in ("coronal", "sagittal")) < 0.95
