"""Explanations of the classification decision: MONAI parity, the ensemble's weighted mean,
layer choice and the option being off."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.contract import StudyInput
from pipelines.errors import PipelineModelError
from pipelines.pipeline import Pipeline
from pipelines.preprocess.decode import decode_series
from pipelines.preprocess.prepare import prepare_2d
from pipelines.spec import PreprocessingSpec
from pipelines.tasks.explanation import explain_batch, normalise_frames, spatial_layer
from tests.pipelines.test_pipeline import PARITY_TOLERANCE, config, members

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _classify(*pairs: tuple[str, float], explain: str = "gradcam", **extra: Any) -> Any:
    return config(2, {"classification": {**members(*pairs), "explain": explain, **extra}}, ["CR"])


def test_member_map_equals_monai_gradcam_run_directly(
    model_registry: Any, cr_study: StudyInput
) -> None:
    from monai.visualize import GradCAM, GradCAMpp

    model = model_registry.get("tiny-cls-resnet", "cpu")
    prepared = prepare_2d(decode_series(cr_study.series[0]), model.card.input, PreprocessingSpec())
    batch = prepared.batch
    assert spatial_layer(model.network, batch) == "layer4"  # timm ResNet: its last stage

    ours = normalise_frames(
        explain_batch(copy.deepcopy(model.network), batch, 1, "gradcam", "layer4")[:, 0].numpy()
    )
    # MONAI's own GradCAM, default post-processing (min-max scaled to 1..0: it flips magnitudes)
    direct = GradCAM(copy.deepcopy(model.network), target_layers="layer4")
    theirs = direct(batch.clone().requires_grad_(True), class_idx=1)[:, 0].detach().numpy()
    assert ours.max() == pytest.approx(1.0)
    assert np.abs(ours - (1.0 - theirs)).max() <= PARITY_TOLERANCE
    plus = GradCAMpp(copy.deepcopy(model.network), target_layers="layer4")
    theirs_pp = plus(batch[:1].clone().requires_grad_(True), class_idx=1)[:, 0].detach().numpy()
    ours_pp = explain_batch(copy.deepcopy(model.network), batch, 1, "gradcampp", "layer4")
    ours_pp_frames = normalise_frames(ours_pp[:1, 0].numpy())
    assert np.abs(ours_pp_frames - (1.0 - theirs_pp)).max() <= PARITY_TOLERANCE

    # through the pipeline: MONAI's map, on the source grid, scaled 0..1, for the decided class
    result = Pipeline(_classify(("tiny-cls-resnet", 1.0)), model_registry).run(cr_study)
    explanation = result.explanation
    assert explanation is not None and result.classification is not None
    assert explanation.class_name == result.classification.decision
    decided = result.classification.classes.index(result.classification.decision)
    raw = GradCAM(copy.deepcopy(model.network), target_layers="layer4", postprocessing=lambda x: x)
    maps = raw(batch.clone().requires_grad_(True), class_idx=decided).detach()
    expected = normalise_frames(prepared.letterbox.inverse(maps)[:, 0].numpy())
    assert explanation.maps.shape == (len(result.source_frames), *expected.shape[1:])
    assert expected.max() == pytest.approx(1.0)  # a real map, not an all-zero frame
    assert np.abs(explanation.maps - expected).max() <= PARITY_TOLERANCE
    assert explanation.member_layers == {"tiny-cls-resnet": "layer4"}
    # the warm shared model was not touched: MONAI's hooks went onto a copy
    assert not model.network.layer4._forward_hooks and not model.network.layer4._backward_hooks


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "occlusion"])
def test_ensemble_map_is_the_weighted_mean_of_the_members(
    model_registry: Any, cr_study: StudyInput, method: str
) -> None:
    pairs = (("tiny-cls-resnet", 2.0), ("tiny-cls-efficientnet", 1.0))
    both = Pipeline(_classify(*pairs, explain=method), model_registry).run(cr_study)
    assert both.explanation is not None and both.classification is not None
    decided = both.classification.decision
    singles = []
    for name, _ in pairs:
        single = Pipeline(_classify((name, 1.0), explain=method), model_registry)
        # each member explains the ensemble's decision, whatever it decides alone
        inputs = single.inputs(single.decode(cr_study))
        from pipelines.tasks.explanation import member_explanation

        member = single.members().classification[0]
        index = list(member.model.card.class_names).index(decided)
        singles.append(
            member_explanation(member, inputs, single.config.tasks.classification, index).maps
        )
    expected = (2.0 * singles[0] + 1.0 * singles[1]) / 3.0
    assert np.abs(both.explanation.maps - expected).max() <= PARITY_TOLERANCE
    assert both.explanation.maps.min() >= 0.0 and both.explanation.maps.max() <= 1.0
    assert max(m.max() for m in singles) > 0.99  # not a mean of empty maps
    assert set(both.explanation.member_methods.values()) == {method}


def test_option_off_gives_no_explanation(model_registry: Any, cr_study: StudyInput) -> None:
    cfg = config(2, {"classification": members(("tiny-cls-resnet", 1.0))}, ["CR"])
    assert cfg.tasks.classification is not None
    assert cfg.tasks.classification.explain == "none"  # the default
    result = Pipeline(cfg, model_registry).run(cr_study)
    assert result.explanation is None and result.to_json_dict()["explanation"] is None


def test_explain_layer_override_and_a_wrong_name(model_registry: Any, cr_study: StudyInput) -> None:
    spec = {"model": "tiny-cls-resnet", "weight": 1.0, "device": "cpu", "explain_layer": "layer3"}
    cfg = config(2, {"classification": {"members": [spec], "explain": "gradcam"}}, ["CR"])
    result = Pipeline(cfg, model_registry).run(cr_study)
    assert result.explanation is not None
    assert result.explanation.member_layers == {"tiny-cls-resnet": "layer3"}
    spec["explain_layer"] = "no.such.layer"
    cfg = config(2, {"classification": {"members": [spec], "explain": "gradcam"}}, ["CR"])
    with pytest.raises(PipelineModelError, match="no.such.layer"):
        Pipeline(cfg, model_registry).run(cr_study)


def test_a_network_without_a_spatial_layer_falls_back_to_occlusion() -> None:
    network = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 2)
    )  # no layer keeps the 8x8 grid
    assert spatial_layer(network, torch.zeros(1, 1, 8, 8)) is None
    maps = explain_batch(network, torch.rand(2, 1, 8, 8), 1, "occlusion", None)
    assert maps.shape == (2, 1, 8, 8)


def test_volume_gets_a_map_per_slice_for_a_2d_classifier(
    model_registry: Any, ct_study: StudyInput
) -> None:
    cfg = config(
        3,
        {"classification": {**members(("tiny-cls-resnet", 1.0)), "explain": "gradcampp"}},
        ["CT"],
    )
    result = Pipeline(cfg, model_registry).run(ct_study)
    explanation = result.explanation
    assert explanation is not None
    frames = len(result.source_frames)
    assert frames == 12 and explanation.maps.shape == (frames, 48, 48)
    per_frame = explanation.maps.reshape(frames, -1)
    # each slice scaled on its own: 1 at its own peak (or all 0 where nothing drove the class)
    assert all(m.max() == pytest.approx(1.0) or m.max() == 0.0 for m in per_frame)
    assert explanation.member_methods == {"tiny-cls-resnet": "gradcampp"}


def test_layer_search_on_plain_and_torchscript_networks() -> None:
    network = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(2, 2),
    )
    example = torch.zeros(1, 1, 8, 8)
    assert spatial_layer(network, example) == "1"  # the ReLU: the last output with a 6x6 grid
    assert not any(m._forward_hooks for m in network.modules())  # the search leaves no hook
    # TorchScript takes no Python hooks: no Grad-CAM layer, so the member gets occlusion
    assert spatial_layer(torch.jit.script(network), example) is None
