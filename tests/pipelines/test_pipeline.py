"""Whole pipelines on phantom DICOM studies with tiny real models behind the real model registry."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.contract import StudyInput
from pipelines.errors import PipelineInputError
from pipelines.members import Member, run_per_device
from pipelines.pipeline import Pipeline
from pipelines.preprocess.decode import decode_series
from pipelines.preprocess.prepare import prepare_2d, prepare_3d
from pipelines.spec import MemberSpec, PipelineConfig, PreprocessingSpec

PARITY_TOLERANCE = 1e-5


def config(dims: int, tasks: dict[str, Any], modality: list[str], **extra: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": f"test-{dims}d",
            "version": "1",
            "selection": {"dims": dims, "modality": modality},
            "tasks": tasks,
            **extra,
        }
    )


def members(*pairs: tuple[str, float], device: str = "cpu") -> dict[str, Any]:
    return {"members": [{"model": m, "weight": w, "device": device} for m, w in pairs]}


def test_2d_pipeline_equals_the_bare_models_on_the_same_tensor(
    model_registry: Any, cr_study: StudyInput
) -> None:
    cfg = config(
        2,
        {
            "segmentation": members(("tiny-seg-unet", 0.3), ("tiny-seg-segresnet", 0.7)),
            "classification": {
                **members(("tiny-cls-resnet", 2), ("tiny-cls-efficientnet", 1)),
                "threshold": 0.449,
            },
        },
        ["CR"],
    )
    result = Pipeline(cfg, model_registry).run(cr_study)

    decoded = decode_series(cr_study.series[0])
    expected_seg = np.zeros_like(result.segmentation.probabilities)
    for name, weight in (("tiny-seg-unet", 0.3), ("tiny-seg-segresnet", 0.7)):
        model = model_registry.get(name, "cpu")
        prepared = prepare_2d(decoded, model.card.input, PreprocessingSpec())
        bare = prepared.letterbox.inverse(model.forward(prepared.batch)).numpy()
        expected_seg += weight * bare[:, 1:].transpose(1, 0, 2, 3)
    assert result.segmentation is not None
    assert result.segmentation.label_map.shape == (1, *decoded.shape)
    assert np.abs(result.segmentation.probabilities - expected_seg).max() <= PARITY_TOLERANCE

    cls = result.classification
    assert cls is not None
    for name in ("tiny-cls-resnet", "tiny-cls-efficientnet"):
        model = model_registry.get(name, "cpu")
        bare = model.forward(prepare_2d(decoded, model.card.input, PreprocessingSpec()).batch)
        assert (
            np.abs(np.array(cls.member_probabilities[name]) - bare.numpy()[0]).max()
            <= PARITY_TOLERANCE
        )
    mean = (
        2 * np.array(cls.member_probabilities["tiny-cls-resnet"])
        + np.array(cls.member_probabilities["tiny-cls-efficientnet"])
    ) / 3
    assert np.allclose(cls.probabilities, mean, atol=1e-6)
    assert cls.threshold == pytest.approx(0.449) and sum(cls.probabilities) == pytest.approx(1.0)
    assert cls.decision == ("abnormal" if cls.positive_probability >= 0.449 else "normal")

    runs = {r.model_name: r for r in result.model_runs}
    assert runs["tiny-seg-unet"].weight == pytest.approx(0.3)
    assert runs["tiny-cls-resnet"].weight == pytest.approx(2 / 3)
    assert all(r.device_used == "cpu" and len(r.weights_sha256) == 64 for r in runs.values())
    assert result.pixel_spacing_mm is not None
    assert [f.sop_instance_uid for f in result.source_frames] == [
        str(__import__("pydicom").dcmread(cr_study.series[0].files[0]).SOPInstanceUID)
    ]
    result.to_json_dict()  # serialisable


def test_findings_match_the_label_map_and_tracking_uids_are_stable(
    model_registry: Any, cr_study: StudyInput
) -> None:
    cfg = config(
        2,
        {
            "segmentation": {
                **members(("tiny-seg-unet", 1)),
                "postprocess": {"threshold": 0.3, "fill_holes": False},
            }
        },
        ["CR"],
    )
    pipeline = Pipeline(cfg, model_registry)
    first, second = pipeline.run(cr_study), pipeline.run(cr_study)
    from scipy import ndimage

    assert first.segmentation is not None
    _, components = ndimage.label(first.segmentation.label_map[0] == 1, np.ones((3, 3)))
    assert components > 0, "the tiny model at threshold 0.3 marks some regions"
    assert len(first.findings) == components
    assert [f.tracking_uid for f in first.findings] == [f.tracking_uid for f in second.findings]
    assert len({f.tracking_uid for f in first.findings}) == len(first.findings)
    for finding in first.findings:
        assert finding.tracking_id.startswith("lesion-")
        assert finding.measurements.area_mm2 is not None and finding.segment_number == 1


def test_requested_cuda_device_falls_back_to_cpu_and_says_so(
    model_registry: Any, cr_study: StudyInput
) -> None:
    if torch.cuda.device_count() >= 2:
        pytest.skip("cuda:1 exists here; nothing falls back")
    cfg = config(2, {"classification": members(("tiny-cls-resnet", 1), device="cuda:1")}, ["CR"])
    result = Pipeline(cfg, model_registry).run(cr_study)
    run = result.model_runs[0]
    assert run.device_requested == "cuda:1" and run.device_used == "cpu"
    assert run.fallback_warning and "cuda:1" in run.fallback_warning
    assert run.fallback_warning in result.warnings
    assert result.summary()["fallbacks"] == [run.fallback_warning]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_device_ensemble_on_gpu_and_cpu(model_registry: Any, cr_study: StudyInput) -> None:
    cfg = config(
        2,
        {
            "segmentation": {
                "members": [
                    {"model": "tiny-seg-unet", "device": "cuda:0"},
                    {"model": "tiny-seg-segresnet", "device": "cpu"},
                ]
            }
        },
        ["CR"],
    )
    result = Pipeline(cfg, model_registry).run(cr_study)
    assert {r.model_name: r.device_used for r in result.model_runs} == {
        "tiny-seg-unet": "cuda:0",
        "tiny-seg-segresnet": "cpu",
    }
    decoded = decode_series(cr_study.series[0])
    expected = np.zeros_like(result.segmentation.probabilities)
    for name, device in (("tiny-seg-unet", "cuda:0"), ("tiny-seg-segresnet", "cpu")):
        model = model_registry.get(name, device)
        prepared = prepare_2d(decoded, model.card.input, PreprocessingSpec())
        expected += 0.5 * prepared.letterbox.inverse(model.forward(prepared.batch)).numpy()[
            :, 1:
        ].transpose(1, 0, 2, 3)
    assert np.abs(result.segmentation.probabilities - expected).max() <= 1e-4


def test_3d_pipeline_sliding_window_parity_and_geometry(
    model_registry: Any, ct_study: StudyInput
) -> None:
    cfg = config(
        3,
        {
            "segmentation": {**members(("tiny-seg3d-unet", 1)), "sw_overlap": 0.25},
            "classification": {**members(("tiny-cls-resnet", 1)), "batch_size": 5},
        },
        ["CT"],
    )
    result = Pipeline(cfg, model_registry).run(ct_study)
    decoded = decode_series(ct_study.series[0])
    assert result.segmentation is not None
    assert result.segmentation.label_map.shape == (12, 48, 48)
    assert result.modality == "CT"
    # files were given in reverse; frames come out in position order (head to foot = descending z)
    import pydicom

    z = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in ct_study.series[0].files]
    uid_z = {
        str(pydicom.dcmread(p).SOPInstanceUID): zz
        for p, zz in zip(ct_study.series[0].files, z, strict=True)
    }
    ordered = [uid_z[f.sop_instance_uid] for f in result.source_frames]
    assert ordered == sorted(ordered)

    from monai.inferers import sliding_window_inference

    model = model_registry.get("tiny-seg3d-unet", "cpu")
    prepared = prepare_3d(decoded, model.card.input, PreprocessingSpec())
    with torch.inference_mode():
        bare = sliding_window_inference(
            prepared.volume, (16, 32, 32), 2, model.forward, overlap=0.25
        )
    expected = prepared.grid.to_source(bare)[0, 1:].numpy()
    assert np.abs(result.segmentation.probabilities - expected).max() <= PARITY_TOLERANCE

    cls_model = model_registry.get("tiny-cls-resnet", "cpu")
    slices = cls_model.forward(
        prepare_2d(decoded, cls_model.card.input, PreprocessingSpec(), per_frame=False).batch
    ).numpy()
    most_suspicious = slices[int(np.argmax(slices[:, 1]))]
    assert result.classification is not None
    assert (
        np.abs(np.array(result.classification.probabilities) - most_suspicious).max()
        <= PARITY_TOLERANCE
    )
    for finding in result.findings:
        assert finding.measurements.volume_mm3 is not None
        assert finding.measurements.intensity_unit == "HU"


def test_detection_boxes_are_in_source_pixels(model_registry: Any, cr_study: StudyInput) -> None:
    cfg = config(
        2,
        {
            "detection": {
                **members(("tiny-det-yolo", 1)),
                "score_threshold": 0.0,
                "skip_threshold": 0.0,
            }
        },
        ["CR"],
    )
    result = Pipeline(cfg, model_registry).run(cr_study)
    rows, cols = decode_series(cr_study.series[0]).shape
    assert result.detections, "an untrained YOLO at conf 0.001 still proposes boxes"
    for box in result.detections:
        assert 0 <= box.x0 < box.x1 <= cols and 0 <= box.y0 < box.y1 <= rows
        assert box.frame_index == 0 and set(box.member_scores) == {"tiny-det-yolo"}
    # without segmentation every fused box is its own finding
    assert len(result.findings) == len(result.detections)
    assert all(f.segment_number is None and f.box is not None for f in result.findings)


def test_no_fitting_series_is_an_input_error(model_registry: Any, ct_study: StudyInput) -> None:
    cfg = config(2, {"classification": members(("tiny-cls-resnet", 1))}, ["CR", "DX"])
    with pytest.raises(PipelineInputError, match="no series fits"):
        Pipeline(cfg, model_registry).run(ct_study)


@dataclass
class _Placement:
    used: str


@dataclass
class _DeviceOnly:
    """Only what the scheduler reads: a device name (no model runs here)."""

    placement: _Placement


def test_members_on_different_devices_run_concurrently_same_device_in_turn() -> None:
    def member(name: str, device: str) -> Member:
        return Member("segmentation", MemberSpec(model=name), 0.5, _DeviceOnly(_Placement(device)))  # type: ignore[arg-type]

    barrier = threading.Barrier(2, timeout=5)
    threads: dict[str, int] = {}

    def work(m: Member) -> str:
        threads[m.name] = threading.get_ident()
        if m.device != "cpu" or m.name == "a":
            barrier.wait()  # deadlocks (times out) unless a and b run at the same time
        return m.name

    outcomes = run_per_device([member("a", "cpu"), member("b", "cuda:0"), member("c", "cpu")], work)
    assert [o.value for o in outcomes] == ["a", "b", "c"]
    assert threads["a"] == threads["c"] != threads["b"]


def test_missing_model_runs_its_fallback_and_the_result_says_so(
    model_registry: Any, ct_study: StudyInput
) -> None:
    cfg = config(
        3,
        {
            "segmentation": {
                "members": [
                    {
                        "model": "not-installed-3d",
                        "device": "cpu",
                        "fallback_model": "tiny-seg-unet",
                    }
                ]
            }
        },
        ["CT"],
    )
    result = Pipeline(cfg, model_registry).run(ct_study)
    assert [r.model_name for r in result.model_runs] == ["tiny-seg-unet"]
    assert any("not-installed-3d" in w and "tiny-seg-unet" in w for w in result.warnings)
    assert result.segmentation is not None and result.segmentation.label_map.shape == (12, 48, 48)
