"""A real MONAI model-zoo bundle run by the node exactly as MONAI's own bundle pipeline runs it.

The bundle is ``spleen_ct_segmentation`` (its real ``configs/inference.json`` and ``metadata.json``,
tests/data/monai_bundles) with seeded random weights of its real UNet, the output bias shifted so
about half the body is "spleen" (a constant answer would hide a wrong mapping). MONAI's reference
reads the DICOM series with its own ``PydicomReader`` and runs the bundle's preprocessing, inferer
and postprocessing; the node runs the same bundle behind its model registry and pipeline.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.card import ModelCard, ModelLoadError, write_card
from models.loaders import load_model, weights_digest
from models.registry import ModelRegistry
from pipelines.contract import StudyInput
from pipelines.pipeline import Pipeline
from pipelines.preprocess.decode import decode_series
from tests.pipelines.bundles import bundle_card, bundle_parser, monai_reference, write_bundle
from tests.pipelines.ct_series import PLANES, labels_by_position, write_ct_series
from tests.pipelines.test_pipeline import config

pytestmark = pytest.mark.slow

SPLEEN = {
    "value": 1,
    "name": "spleen",
    "category": {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"},
    "type": {"value": "78961009", "scheme": "SCT", "meaning": "Spleen"},
}


def _reference(bundle: Path, folder: Path, network: torch.nn.Module, discrete: bool) -> np.ndarray:
    """MONAI's own run of the bundle on the DICOM folder: (channels, i, j, k) on the source grid."""
    return monai_reference(bundle_parser(bundle), folder, network, discrete)


@pytest.fixture(scope="module")
def spleen_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    root = tmp_path_factory.mktemp("bundles")

    def half_spleen(network: torch.nn.Module, parser: Any) -> None:
        series = write_ct_series(root / "calibration", "axial-head-first")
        data = parser.get_parsed_content("preprocessing")({"image": str(series.files[0].parent)})
        with torch.no_grad():  # shift the spleen logit so about half the field says "spleen"
            logits = parser.get_parsed_content("inferer")(data["image"][None], network)
            last = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d)][-1]
            last.bias[1] -= float((logits[0, 1] - logits[0, 0]).median())

    card = {
        "name": "spleen-bundle",
        "version": "0.2.0",
        "labels": [SPLEEN],
        "device_uid": "2.25.99001",
    }
    network = write_bundle(root, "spleen", "spleen_ct_segmentation", card, tune=half_spleen)
    return root, network


def _node_label_map(models_dir: Path, series_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    series = write_ct_series(series_dir, "axial-head-first") if not series_dir.exists() else None
    assert series is not None
    return _run_node(models_dir, series)


def _run_node(models_dir: Path, series: Any) -> tuple[np.ndarray, np.ndarray]:
    task = {
        "members": [{"model": "spleen-bundle", "device": "cpu"}],
        "postprocess": {
            "min_component_mm3": 0,
            "min_component_mm2": 0,
            "min_component_pixels": 1,
            "fill_holes": False,
        },
    }
    cfg = config(3, {"segmentation": task}, ["CT"])
    study = StudyInput(study_instance_uid="1.2.3", series=(series,))
    result = Pipeline(cfg, ModelRegistry(models_dir)).run(study)
    assert result.segmentation is not None and result.segmentation.probabilities is not None
    decoded = decode_series(series)
    assert decoded.affine_lps is not None
    return result.segmentation.label_map, decoded.affine_lps


def test_node_runs_the_bundle_as_monai_does(
    spleen_bundle: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    root, network = spleen_bundle
    bundle = root / "spleen" / "spleen_ct_segmentation"
    series = write_ct_series(tmp_path / "ct", "axial-head-first")
    reference_labels = _reference(bundle, tmp_path / "ct", network, discrete=True)[0]
    reference_probs = _reference(bundle, tmp_path / "ct", network, discrete=False)[1]

    task = {"members": [{"model": "spleen-bundle", "device": "cpu"}]}
    task["postprocess"] = {"min_component_mm3": 0, "min_component_pixels": 1, "fill_holes": False}
    study = StudyInput(study_instance_uid="1.2.3", series=(series,))
    result = Pipeline(config(3, {"segmentation": task}, ["CT"]), ModelRegistry(root)).run(study)
    seg = result.segmentation
    assert seg is not None and seg.probabilities is not None
    # the node's (frame, row, column) vs MONAI's (column, row, frame)
    node_probs = seg.probabilities[0]
    expected_probs = reference_probs.transpose(2, 1, 0)
    assert node_probs.shape == expected_probs.shape
    assert float(np.abs(node_probs - expected_probs).max()) <= 1e-4
    expected_labels = reference_labels.transpose(2, 1, 0)
    assert 0.2 < float(expected_labels.mean()) < 0.8  # a spatially varying answer
    agreement = float((seg.label_map == expected_labels).mean())
    assert agreement >= 0.999, agreement


def test_editing_the_bundles_preprocessing_changes_the_nodes_output(
    spleen_bundle: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    root, _ = spleen_bundle
    series = write_ct_series(tmp_path / "ct", "axial-head-first")
    before, _ = _run_node(root, series)
    edited = tmp_path / "models"
    shutil.copytree(root / "spleen", edited / "spleen")
    config_file = edited / "spleen" / "spleen_ct_segmentation" / "configs" / "inference.json"
    config_file.write_text(config_file.read_text().replace('"a_max": 164', '"a_max": 400'))
    card_file = edited / "spleen" / "card.yaml"
    card = ModelCard.model_validate(
        {
            **__import__("yaml").safe_load(card_file.read_text()),
            "weights": str(edited / "spleen" / "spleen_ct_segmentation"),
            "sha256": weights_digest(edited / "spleen" / "spleen_ct_segmentation"),
        }
    )
    write_card(card, card_file)
    after, _ = _run_node(edited, series)
    assert (before != after).any()


@pytest.mark.parametrize(
    "plane", [p for p in PLANES if p != "axial-head-first"] + ["reversed-files"]
)
def test_same_anatomy_in_any_plane_or_order_gives_the_same_segmentation(
    spleen_bundle: tuple[Path, torch.nn.Module], tmp_path: Path, plane: str
) -> None:
    root, _ = spleen_bundle
    base_map, base_affine = _run_node(root, write_ct_series(tmp_path / "base", "axial-head-first"))
    if plane == "reversed-files":
        other = write_ct_series(tmp_path / "other", "axial-head-first", reverse_files=True)
    else:
        other = write_ct_series(tmp_path / "other", plane)
    other_map, other_affine = _run_node(root, other)
    base = labels_by_position(base_map, base_affine)
    moved = labels_by_position(other_map, other_affine)
    assert base.keys() == moved.keys()
    a = np.array([base[k] for k in base]) > 0
    b = np.array([moved[k] for k in base]) > 0
    dice = 2 * float((a & b).sum()) / float(a.sum() + b.sum())
    assert dice >= 0.99, dice


def test_card_labels_must_be_the_bundles_channel_def(
    spleen_bundle: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    root, _ = spleen_bundle
    bundle = root / "spleen" / "spleen_ct_segmentation"
    card = bundle_card(
        bundle,
        name="wrong-labels",
        version="1",
        labels=[{**SPLEEN, "name": "liver"}],
        device_uid="2.25.99002",
        disclaimer="",
    )
    with pytest.raises(ModelLoadError, match="channel_def"):
        load_model(card, "cpu")
