"""A 3D model's output back on the source slices: what the bare model's output maps to, on the
model's device (CPU here, CUDA where there is one), with the counts and probabilities a user sees."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from pipelines.contract import StudyInput
from pipelines.pipeline import Pipeline
from pipelines.preprocess.prepare import PreparedInputs, prepare_3d
from pipelines.spec import PreprocessingSpec
from pipelines.stages import collect_stages, stage
from pipelines.tasks.segmentation import member_output
from tests.pipelines.test_pipeline import config, members

MODEL = "tiny-seg3d-unet"


def _bare_on_source(model_registry: Any, study: StudyInput, device: str) -> np.ndarray:
    """The bare model's lesion probability mapped back with MONAI's recorded inverse."""
    pipeline = Pipeline(config(3, {"segmentation": members((MODEL, 1.0))}, ["CT"]), model_registry)
    decoded = pipeline.decode(study)
    model = model_registry.get(MODEL, device)
    prepared = prepare_3d(decoded, model.card.input, PreprocessingSpec())
    with torch.inference_mode():
        out = sliding_window_inference(
            prepared.volume.to(device), tuple(model.card.input.spatial_size), 1, model.forward
        )
    return prepared.grid.to_source(out[:, 1:].float().cpu())[0].numpy()


def test_3d_probabilities_counts_and_label_map_are_the_bare_models_on_the_source(
    model_registry: Any, ct_study: StudyInput
) -> None:
    cfg = config(3, {"segmentation": members((MODEL, 1.0))}, ["CT"])
    result = Pipeline(cfg, model_registry).run(ct_study)
    seg = result.segmentation
    assert seg is not None and seg.probabilities is not None
    expected = _bare_on_source(model_registry, ct_study, "cpu")
    assert seg.probabilities.shape == expected.shape
    assert seg.probabilities.flags.c_contiguous
    np.testing.assert_allclose(seg.probabilities, expected, atol=1e-5)
    passing = seg.probabilities[0] >= 0.5  # before clean-up: what the member counts are of
    assert passing.any()
    assert seg.member_pixel_counts[MODEL]["lesion"] == int(np.count_nonzero(passing))


def _reference_on_source(model_registry: Any, study: StudyInput) -> np.ndarray:
    """The lesion probability the way the node computed it before the model-grid shortcuts: the
    window on every source voxel, MONAI's Orientation on the source volume, trilinear resampling,
    the sliding window, and back by MONAI's recorded inverse and ``F.interpolate``."""
    from monai.transforms import Orientation

    from pipelines.preprocess.geometry import VolumeResampling
    from pipelines.preprocess.intensity import channels_image, normalise_channels
    from pipelines.preprocess.orientation import affine_ras, as_metatensor, model_grid

    pipeline = Pipeline(config(3, {"segmentation": members((MODEL, 1.0))}, ["CT"]), model_registry)
    decoded = pipeline.decode(study)
    model = model_registry.get(MODEL, "cpu")
    card = model.card.input
    images = channels_image(decoded, card.intensity, PreprocessingSpec(), 1, per_frame=False)
    orientation = Orientation(axcodes=card.axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))
    view = torch.from_numpy(images).permute(1, 3, 2, 0)
    oriented = orientation(as_metatensor(view, affine_ras(decoded), "s", True))
    spacing = np.linalg.norm(oriented.affine.numpy()[:3, :3], axis=0)
    shape = tuple(int(n) for n in oriented.shape[1:])
    resampling = VolumeResampling(shape, tuple(float(s) for s in spacing), tuple(card.pixdim))  # type: ignore[arg-type]
    volume = resampling.forward(oriented.as_tensor().float().contiguous()[None])
    volume = torch.from_numpy(
        normalise_channels(volume.numpy(), card.intensity.mean, card.intensity.std)
    )
    with torch.inference_mode():
        out = sliding_window_inference(volume, tuple(card.spatial_size), 1, model.forward)
    grid = model_grid(decoded, card.axcodes, tuple(card.pixdim))  # type: ignore[arg-type]
    return grid.to_source(out[:, 1:].float())[0].numpy()


def test_3d_label_map_and_counts_are_those_of_the_full_resolution_path(
    model_registry: Any, ct_study: StudyInput
) -> None:
    """Windowing only the voxels the resampling reads, resampling before reorienting and
    flipping on the model grid change float rounding only: the same voxels pass."""
    cfg = config(3, {"segmentation": members((MODEL, 1.0))}, ["CT"])
    seg = Pipeline(cfg, model_registry).run(ct_study).segmentation
    assert seg is not None and seg.probabilities is not None
    reference = _reference_on_source(model_registry, ct_study)
    np.testing.assert_allclose(seg.probabilities, reference, atol=1e-4)
    passing = reference[0] >= 0.5
    assert passing.any() and not passing.all()
    np.testing.assert_array_equal(seg.probabilities[0] >= 0.5, passing)
    assert seg.member_pixel_counts[MODEL]["lesion"] == int(np.count_nonzero(passing))


def test_stage_times_name_every_step_and_add_up_to_the_run(
    model_registry: Any, ct_study: StudyInput
) -> None:
    pipeline = Pipeline(config(3, {"segmentation": members((MODEL, 1.0))}, ["CT"]), model_registry)
    pipeline.run(ct_study)  # warm
    with collect_stages() as times:
        start = time.perf_counter()
        pipeline.run(ct_study)
        wall = time.perf_counter() - start
    expected = {"decode", "intensity", "resample", "inference", "map back", "label map"}
    assert expected | {"post-process", "measure"} <= set(times)
    assert all(t >= 0 for t in times.values())
    assert sum(times.values()) <= wall + 1e-3
    with stage("outside"):  # no collector: nothing recorded, nothing raised
        pass
    assert "outside" not in times


def test_nested_stages_are_exclusive() -> None:
    with collect_stages() as times, stage("outer"):
        time.sleep(0.02)
        with stage("inner"):
            time.sleep(0.03)
    assert times["inner"] >= 0.03
    assert 0.02 <= times["outer"] < 0.03 + 0.02


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_output_is_mapped_back_on_the_gpu_to_the_cpu_result(
    model_registry: Any, ct_study: StudyInput
) -> None:
    cfg = config(3, {"segmentation": members((MODEL, 1.0), device="cuda:0")}, ["CT"])
    pipeline = Pipeline(cfg, model_registry)
    decoded = pipeline.decode(ct_study)
    member = pipeline.members().segmentation[0]
    assert member.device.startswith("cuda")
    inputs = PreparedInputs(decoded, cfg.preprocessing, volumetric=True)
    output = member_output(member, inputs, cfg.tasks.segmentation)
    assert output.at_model is not None and output.at_model.device.type == "cuda"
    on_gpu = output.full()
    assert isinstance(on_gpu, np.ndarray)
    np.testing.assert_allclose(
        on_gpu, _bare_on_source(model_registry, ct_study, "cuda:0"), atol=1e-4
    )
    result = pipeline.run(ct_study)
    assert result.segmentation is not None and result.segmentation.probabilities is not None
    cpu = Pipeline(config(3, {"segmentation": members((MODEL, 1.0))}, ["CT"]), model_registry)
    reference = cpu.run(ct_study).segmentation
    assert reference is not None and reference.probabilities is not None
    np.testing.assert_allclose(
        result.segmentation.probabilities, reference.probabilities, atol=1e-4
    )
