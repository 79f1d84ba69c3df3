"""A real 104-organ MONAI model-zoo bundle run by the node as MONAI runs it (issue 16).

The bundle is ``wholeBody_ct_segmentation`` (its real ``configs/inference.json`` and
``metadata.json``, tests/data/monai_bundles): SegResNet with 105 output channels, softmax, arg-max
and ``Invertd`` with nearest interpolation *after* the arg-max. Its real network gets seeded random
weights, the last layer scaled so the arg-max changes across the field (dozens of labels, not one).
The card lists no labels: they come from the bundle's ``channel_def`` with SNOMED CT codes from the
shipped TotalSegmentator map, all anatomy. MONAI's reference reads the DICOM series with its own
``PydicomReader`` and runs the bundle's preprocessing, inferer and postprocessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.card import read_card
from models.loaders import load_model
from models.registry import ModelRegistry
from pipelines.contract import StudyInput
from pipelines.pipeline import Pipeline
from tests.pipelines.bundles import bundle_parser, monai_reference, write_bundle
from tests.pipelines.ct_series import write_ct_series
from tests.pipelines.test_pipeline import config

pytestmark = pytest.mark.slow

NAME = "wholeBody_ct_segmentation"


def _parser(bundle: Path) -> Any:
    parser = bundle_parser(bundle)
    parser["inferer"]["device"] = "$torch.device('cpu')"
    return parser


@pytest.fixture(scope="module")
def wholebody(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    root = tmp_path_factory.mktemp("bundles")

    def sharpen(network: torch.nn.Module, _: Any) -> None:
        with torch.no_grad():  # sharper random logits: the arg-max varies voxel to voxel region
            last = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d)][-1]
            last.weight.mul_(20.0)

    card = {"version": "0.2.5", "device_uid": "2.25.99016"}
    return root, write_bundle(root, "wholebody", NAME, card, tune=sharpen)


def _reference(bundle: Path, folder: Path, network: torch.nn.Module) -> tuple[np.ndarray, ...]:
    """MONAI's own run on the DICOM folder: (label map, probabilities) as (…, i, j, k)."""
    labels, probabilities = (
        monai_reference(_parser(bundle), folder, network, discrete) for discrete in (True, False)
    )
    return labels[0], probabilities


def test_card_without_labels_takes_coded_anatomy_from_channel_def(
    wholebody: tuple[Path, torch.nn.Module],
) -> None:
    root, _ = wholebody
    card = read_card(root / "wholebody" / "card.yaml")
    assert card.labels == []
    loaded = load_model(card, "cpu")
    labels = sorted(loaded.card.labels, key=lambda lab: lab.value)
    assert len(labels) == 104 and all(lab.kind == "anatomy" for lab in labels)
    assert (labels[0].name, labels[0].type.value) == ("spleen", "78961009")
    kidney_right, kidney_left = labels[1], labels[2]
    assert kidney_right.type.value == kidney_left.type.value == "64033007"
    assert kidney_right.type_modifier is not None and kidney_left.type_modifier is not None
    assert (kidney_right.type_modifier.meaning, kidney_left.type_modifier.meaning) == (
        "Right",
        "Left",
    )
    assert labels[-1].name == "urinary_bladder"
    assert len({lab.color for lab in labels}) == 104


def test_node_runs_the_104_label_bundle_as_monai_does(
    wholebody: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    root, network = wholebody
    series = write_ct_series(tmp_path / "ct", "axial-head-first")
    reference_labels, reference_probs = _reference(
        root / "wholebody" / NAME, tmp_path / "ct", network
    )
    task = {
        "members": [{"model": "wholebody", "device": "cpu"}],
        "postprocess": {
            "min_component_mm3": 0,
            "min_component_pixels": 1,
            "fill_holes": False,
            "max_components": 100000,
        },
    }
    study = StudyInput(study_instance_uid="1.2.3", series=(series,))
    result = Pipeline(config(3, {"segmentation": task}, ["CT"]), ModelRegistry(root)).run(study)
    seg = result.segmentation
    assert seg is not None and seg.probabilities is not None
    expected_labels = reference_labels.transpose(2, 1, 0)
    present = np.unique(expected_labels)
    assert present.size >= 10, present  # a spatially varying answer over many organs
    assert seg.label_map.dtype == np.uint8
    agreement = float((seg.label_map == expected_labels).mean())
    assert agreement >= 0.999, agreement
    expected_probs = reference_probs[1:].transpose(0, 3, 2, 1)
    assert seg.probabilities.shape == expected_probs.shape
    difference = float(np.abs(seg.probabilities - expected_probs).max())
    print(
        f"wholeBody parity: {agreement:.6f} voxel agreement, {difference:.2e} max probability "
        f"difference, {present.size} labels present"
    )  # shown with pytest -s
    assert difference <= 1e-4
    # organs are anatomy: measured structures, never lesions with a severity
    assert result.findings == ()
    assert {s.label.value for s in result.structures} == set(int(v) for v in present if v)
    assert result.conclusion().endswith("anatomical structures segmented")


def test_label_map_without_probabilities_is_monais_and_channels_invert_in_chunks(
    wholebody: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    """When no output needs the probabilities at source resolution, the label map is the bundle's
    own arg-max inverted as one channel (what MONAI saves) and the heat map the highest label
    probability; probabilities inverted one channel at a time equal the all-channel inverse."""
    from pipelines.tasks.bundle import bundle_output
    from pipelines.tasks.segmentation import run_segmentation

    root, network = wholebody
    series = write_ct_series(tmp_path / "ct", "axial-head-first")
    reference_labels, reference_probs = _reference(
        root / "wholebody" / NAME, tmp_path / "ct", network
    )
    task = {"members": [{"model": "wholebody", "device": "cpu"}]}
    pipeline = Pipeline(config(3, {"segmentation": task}, ["CT"]), ModelRegistry(root))
    study = StudyInput(study_instance_uid="1.2.3", series=(series,))
    inputs = pipeline.inputs(pipeline.decode(study))
    members = pipeline.members().segmentation
    assert pipeline.config.tasks.segmentation is not None
    run = run_segmentation(
        pipeline.config.tasks.segmentation, members, inputs, True, keep_probabilities=False
    )
    assert run.probabilities is None and run.heat is not None
    assert run.label_map.dtype == np.uint8
    expected = reference_labels.transpose(2, 1, 0)
    agreement = float((run.label_map == expected).mean())
    assert agreement >= 0.999, agreement
    expected_probs = reference_probs[1:].transpose(0, 3, 2, 1)
    assert float(np.abs(run.heat - expected_probs.max(axis=0)).max()) <= 1e-4
    counts = run.member_pixel_counts["wholebody"]
    assert sum(counts.values()) == int(np.count_nonzero(run.label_map))

    bundle = members[0].model.bundle  # type: ignore[attr-defined]
    chunked = bundle_output(bundle, inputs.series).probabilities(budget=1)  # one channel a chunk
    assert float(np.abs(chunked - expected_probs).max()) <= 1e-4
