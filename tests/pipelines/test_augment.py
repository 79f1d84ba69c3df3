"""Per-member flip test-time augmentation and half precision (pipeline YAML ``tta``/``precision``).

Two kinds of evidence: a network that is itself flip-symmetric must give the same output with flip
TTA (nothing to average away), and the real pipeline with the tiny (asymmetric) models must give
exactly the mean of the bare model's outputs on the mirrored inputs, each mirrored back.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch

from core.config import ConfigError
from models.card import ModelCard
from models.devices import DevicePlacement
from models.loaders import LoadedModel
from pipelines.augment import augmented_forward, flip_sets
from pipelines.contract import StudyInput
from pipelines.pipeline import Pipeline
from pipelines.preprocess.decode import decode_series
from pipelines.preprocess.prepare import prepare_2d, prepare_3d
from pipelines.spec import MemberSpec, PreprocessingSpec, parse_pipeline_config
from tests.pipelines.test_pipeline import config

TOLERANCE = 1e-6


def _card(dims: int) -> ModelCard:
    size = [16] * dims
    return ModelCard.model_validate(
        {
            "name": f"symmetric-{dims}d",
            "version": "1",
            "task": "segmentation",
            "framework": "monai",
            "architecture": "UNet",
            "weights": "unused.pt",
            "sha256": "0" * 64,
            "input": {"dims": dims, "spatial_size": size},
            "labels": [
                {
                    "value": 1,
                    "name": "lesion",
                    "category": {"value": "49755003", "meaning": "Morphologically Altered"},
                    "type": {"value": "52988006", "meaning": "Lesion"},
                }
            ],
            "device_uid": "2.25.4242",
        }
    )


def _network(dims: int, symmetric: bool) -> torch.nn.Module:
    """Conv → ReLU → 1x1 conv; with every kernel averaged over its mirror images when
    ``symmetric``, so the network commutes with flips of any spatial axis."""
    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    torch.manual_seed(3)
    first, head = conv(1, 6, 3, padding=1), conv(6, 2, 1)
    if symmetric:
        with torch.no_grad():
            kernel = first.weight
            spatial = list(range(2, 2 + dims))
            flips = [
                torch.flip(kernel, list(c)) if c else kernel
                for n in range(dims + 1)
                for c in itertools.combinations(spatial, n)
            ]
            kernel.copy_(torch.stack(flips).mean(0))
    return torch.nn.Sequential(first, torch.nn.ReLU(), head)


def _loaded(dims: int, symmetric: bool) -> LoadedModel:
    placement = DevicePlacement("cpu", "cpu")
    return LoadedModel(_card(dims), placement, "0" * 64, network=_network(dims, symmetric))


@pytest.mark.parametrize("dims", [2, 3])
def test_flip_tta_leaves_a_flip_symmetric_network_unchanged(dims: int) -> None:
    model = _loaded(dims, symmetric=True)
    x = torch.randn(2, 1, *([12] * dims))
    spec = MemberSpec(model="m", tta="flip")
    plain = model.forward(x)
    augmented = augmented_forward(model.forward, spec, "cpu")(x)
    assert float((augmented - plain).abs().max()) <= TOLERANCE


@pytest.mark.parametrize("dims", [2, 3])
def test_flip_tta_of_an_asymmetric_network_is_the_mean_of_the_mirrored_runs(dims: int) -> None:
    model = _loaded(dims, symmetric=False)
    x = torch.randn(2, 1, *([12] * dims))
    spec = MemberSpec(model="m", tta="flip", flip_axes=(0, dims - 1))
    combos = [(), (0,), (dims - 1,), (0, dims - 1)]
    manual = torch.stack(
        [
            torch.flip(model.forward(torch.flip(x, [2 + a for a in c])), [2 + a for a in c])
            for c in combos
        ]
    ).mean(0)
    augmented = augmented_forward(model.forward, spec, "cpu")(x)
    assert float((augmented - manual).abs().max()) <= TOLERANCE
    assert float((augmented - model.forward(x)).abs().max()) > 1e-3  # TTA changed something


def test_flip_sets_are_every_combination_identity_first() -> None:
    assert flip_sets((), 2) == [(), (0,), (1,), (0, 1)]
    assert len(flip_sets((), 3)) == 8
    assert flip_sets((2,), 3) == [(), (2,)]


def _mirrored_mean(forward: Any, batch: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    outs = []
    for combo in flip_sets(axes, batch.ndim - 2):
        dims = [2 + a for a in combo]
        out = forward(torch.flip(batch, dims) if dims else batch)
        outs.append(torch.flip(out, dims) if dims and out.ndim == batch.ndim else out)
    return torch.stack(outs).mean(0)


def test_pipeline_flip_tta_equals_the_manual_average_2d(
    model_registry: Any, cr_study: StudyInput
) -> None:
    tta = {"tta": "flip", "device": "cpu"}
    cfg = config(
        2,
        {
            "segmentation": {"members": [{"model": "tiny-seg-unet", **tta}]},
            "classification": {"members": [{"model": "tiny-cls-resnet", **tta}]},
        },
        ["CR"],
    )
    result = Pipeline(cfg, model_registry).run(cr_study)
    decoded = decode_series(cr_study.series[0])

    seg_model = model_registry.get("tiny-seg-unet", "cpu")
    prepared = prepare_2d(decoded, seg_model.card.input, PreprocessingSpec())
    mean = _mirrored_mean(seg_model.forward, prepared.batch, ())
    expected = prepared.letterbox.inverse(mean)[:, 1:].numpy().transpose(1, 0, 2, 3)
    assert result.segmentation is not None
    assert np.abs(result.segmentation.probabilities - expected).max() <= TOLERANCE
    plain = prepared.letterbox.inverse(seg_model.forward(prepared.batch))[:, 1:].numpy()
    assert np.abs(plain.transpose(1, 0, 2, 3) - expected).max() > 1e-3

    cls_model = model_registry.get("tiny-cls-resnet", "cpu")
    batch = prepare_2d(decoded, cls_model.card.input, PreprocessingSpec()).batch
    cls_mean = _mirrored_mean(cls_model.forward, batch, ()).numpy()[0]
    assert result.classification is not None
    assert np.abs(np.array(result.classification.probabilities) - cls_mean).max() <= TOLERANCE


@pytest.mark.slow
def test_pipeline_flip_tta_equals_the_manual_average_3d(
    model_registry: Any, ct_study: StudyInput
) -> None:
    from monai.inferers import sliding_window_inference

    member = {"model": "tiny-seg3d-unet", "device": "cpu", "tta": "flip", "flip_axes": [0, 2]}
    cfg = config(3, {"segmentation": {"members": [member], "sw_overlap": 0.25}}, ["CT"])
    result = Pipeline(cfg, model_registry).run(ct_study)
    model = model_registry.get("tiny-seg3d-unet", "cpu")
    prepared = prepare_3d(decode_series(ct_study.series[0]), model.card.input, PreprocessingSpec())
    with torch.inference_mode():
        bare = sliding_window_inference(
            prepared.volume,
            (16, 32, 32),
            2,
            lambda x: _mirrored_mean(model.forward, x, (0, 2)),
            overlap=0.25,
        )
    assert isinstance(bare, torch.Tensor)
    expected = prepared.grid.to_source(bare[:, 1:])[0].numpy()
    assert result.segmentation is not None
    assert np.abs(result.segmentation.probabilities - expected).max() <= TOLERANCE


def _seg_run(registry: Any, study: StudyInput, **member: Any) -> Any:
    spec = {"model": "tiny-seg-unet", "device": "cpu", **member}
    cfg = config(2, {"segmentation": {"members": [spec]}}, ["CR"])
    return Pipeline(cfg, registry).run(study)


def test_bf16_on_the_cpu_runs_in_bf16_within_tolerance(
    model_registry: Any, cr_study: StudyInput
) -> None:
    fp32 = _seg_run(model_registry, cr_study)
    bf16 = _seg_run(model_registry, cr_study, precision="bf16")
    difference = np.abs(bf16.segmentation.probabilities - fp32.segmentation.probabilities)
    assert 0 < float(difference.max()) <= 0.05, float(difference.max())  # autocast really ran
    assert float((bf16.segmentation.label_map == fp32.segmentation.label_map).mean()) >= 0.99
    assert not any("precision" in w for w in bf16.warnings)


def test_fp16_on_the_cpu_falls_back_to_fp32_with_a_warning(
    model_registry: Any, cr_study: StudyInput
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: auto would not fall back")
    fp32 = _seg_run(model_registry, cr_study)
    fp16 = _seg_run(model_registry, cr_study, precision="fp16")
    assert np.array_equal(fp16.segmentation.probabilities, fp32.segmentation.probabilities)
    assert any("fp16 needs CUDA; ran in fp32 on cpu" in w for w in fp16.warnings), fp16.warnings


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_on_cuda_runs_under_autocast_within_tolerance(
    model_registry: Any, cr_study: StudyInput
) -> None:
    fp32 = _seg_run(model_registry, cr_study, device="cuda:0")
    fp16 = _seg_run(model_registry, cr_study, device="cuda:0", precision="fp16")
    assert fp16.model_runs[0].device_used == "cuda:0"
    assert not any("precision" in w for w in fp16.warnings)
    difference = np.abs(fp16.segmentation.probabilities - fp32.segmentation.probabilities)
    assert 0 < float(difference.max()) <= 0.01, float(difference.max())
    assert float((fp16.segmentation.label_map == fp32.segmentation.label_map).mean()) >= 0.999


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ({"flip_axes": [0]}, "flip_axes needs tta: flip"),
        ({"tta": "flip", "flip_axes": [0, 0]}, "distinct spatial axes"),
        ({"tta": "flip", "flip_axes": [3]}, "distinct spatial axes"),
        ({"tta": "mirror"}, "tta"),
        ({"precision": "fp8"}, "precision"),
    ],
)
def test_member_options_are_validated(member: dict[str, Any], message: str) -> None:
    data = {
        "name": "p",
        "version": "1",
        "selection": {"modality": ["CR"]},
        "tasks": {"segmentation": {"members": [{"model": "m", **member}]}},
    }
    with pytest.raises(ConfigError, match=message):
        parse_pipeline_config(data, "p.yaml")


def test_detection_members_refuse_tta_and_precision() -> None:
    data = {
        "name": "p",
        "version": "1",
        "selection": {"modality": ["CR"]},
        "tasks": {"detection": {"members": [{"model": "det", "tta": "flip"}]}},
    }
    with pytest.raises(ConfigError, match="not detection"):
        parse_pipeline_config(data, "p.yaml")


def test_a_2d_model_with_a_third_flip_axis_is_refused(
    model_registry: Any, cr_study: StudyInput
) -> None:
    from pipelines.errors import PipelineModelError

    with pytest.raises(PipelineModelError, match="lacks"):
        _seg_run(model_registry, cr_study, tta="flip", flip_axes=[2])


class _Provider:
    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    def get(self, name: str, device: str) -> LoadedModel:
        return self.model


@pytest.mark.parametrize("own", ["bundle", "nnunet"])
@pytest.mark.parametrize("option", [{"tta": "flip"}, {"precision": "bf16"}])
def test_members_with_their_own_inferer_refuse_tta_and_precision(
    own: str, option: dict[str, str]
) -> None:
    from pipelines.errors import PipelineModelError
    from pipelines.members import resolve_members

    model = _loaded(3, symmetric=False)
    setattr(model, own, object())  # a bundle / nnU-Net predictor runs its own inference
    spec = MemberSpec(model="own", device="cpu", **option)  # type: ignore[arg-type]
    with pytest.raises(PipelineModelError, match="not applied"):
        resolve_members("segmentation", [spec], [1.0], _Provider(model))
    plain = MemberSpec(model="own", device="cpu")
    assert resolve_members("segmentation", [plain], [1.0], _Provider(model))[0].spec == plain
