"""The ``enhancement`` task: spec validation, parity with the standalone network, units and
geometry kept (CT stays in HU), and the derived series it produces (read back, dciodvfy)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
import yaml

from core.config import ConfigError
from core.domain import ArtifactKind
from models.enhance import ResidualDenoiser, from_unit, to_unit, unit_range
from models.registry import ModelRegistry
from node.results.enhanced import DERIVATION_CODE
from node.results.produce import OutputOptions, produce_results
from pipelines.contract import StudyInput
from pipelines.pipeline import Pipeline
from pipelines.preprocess.decode import decode_series
from pipelines.spec import PipelineConfig, parse_pipeline_config

PARITY_TOLERANCE = 1e-5
ROOT = Path(__file__).resolve().parents[2]
DEMO_MODELS = ROOT / "models" / "cards"


def config(tasks: dict[str, Any], selection: str = "CR") -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "enhance-test",
            "version": "1",
            "selection": {"modality": [selection]},
            "tasks": tasks,
            "outputs": {"overlay": False, "pdf": False, "sr": False},
        }
    )


def members(*pairs: tuple[str, float]) -> dict[str, Any]:
    return {"members": [{"model": m, "weight": w, "device": "cpu"} for m, w in pairs]}


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry(DEMO_MODELS)


def test_spec_accepts_an_enhancement_only_pipeline_and_refuses_tta() -> None:
    cfg = config({"enhancement": members(("demo-denoise-dncnn", 1.0))})
    assert cfg.tasks.enhancement is not None
    assert [t for t, _ in cfg.tasks.members()] == ["enhancement"]
    bad = {"members": [{"model": "demo-denoise-dncnn", "tta": "flip"}]}
    with pytest.raises(ConfigError, match="do not apply to denoisers"):
        parse_pipeline_config(
            {
                "name": "x",
                "version": "1",
                "selection": {"modality": ["CR"]},
                "tasks": {"enhancement": bad},
            },
            "x.yaml",
        )


def test_demo_enhancement_pipeline_is_off_by_default() -> None:
    path = ROOT / "pipelines" / "definitions" / "demo-enhance-2d.yaml"
    cfg = parse_pipeline_config(yaml.safe_load(path.read_text()), str(path))
    assert cfg.enabled is False
    assert cfg.tasks.enhancement is not None
    assert {m.model for m in cfg.tasks.enhancement.members} <= set(ModelRegistry(DEMO_MODELS).cards)


def _standalone(registry: ModelRegistry, study: StudyInput) -> np.ndarray:
    """The network loaded from its weights file, on the decoded source values."""
    card = registry.card("demo-denoise-dncnn")
    network = ResidualDenoiser(**card.arguments)
    network.load_state_dict(torch.load(card.weights_path, weights_only=True))
    network.eval()
    values = decode_series(study.series[0]).values
    out = []
    for frame in values:
        low, high = unit_range(frame)
        with torch.no_grad():
            y = network(torch.from_numpy(to_unit(frame, low, high))[None, None])[0, 0].numpy()
        out.append(from_unit(y, low, high))
    return np.stack(out)


def test_network_member_equals_the_standalone_network(
    registry: ModelRegistry, cr_study: StudyInput
) -> None:
    result = Pipeline(config({"enhancement": members(("demo-denoise-dncnn", 1.0))}), registry).run(
        cr_study
    )
    enhanced = result.enhancement
    assert enhanced is not None
    reference = _standalone(registry, cr_study)
    assert enhanced.image.shape == reference.shape  # source geometry, nothing resized
    scale = float(np.abs(reference).max())
    assert np.abs(enhanced.image - reference).max() <= PARITY_TOLERANCE * max(scale, 1.0)
    assert enhanced.sigma_after < enhanced.sigma_before
    assert [r.task for r in result.model_runs] == ["enhancement"]
    assert result.to_json_dict()["enhancement"]["sigma_before"] == enhanced.sigma_before


def test_stored_result_keeps_the_quality_figures(
    registry: ModelRegistry, cr_study: StudyInput, tmp_path: Path
) -> None:
    from node.results.store import load_result, save_result

    result = Pipeline(config({"enhancement": members(("demo-denoise-nlm", 1.0))}), registry).run(
        cr_study
    )
    save_result(result, tmp_path)
    stored = load_result(tmp_path).enhancement
    assert stored is not None and result.enhancement is not None
    assert stored.image is None  # the pixels are in the derived series, not the job store
    assert (stored.sigma_before, stored.sigma_after, stored.members) == (
        result.enhancement.sigma_before,
        result.enhancement.sigma_after,
        ("demo-denoise-nlm",),
    )


def test_ensemble_is_the_weighted_mean(registry: ModelRegistry, cr_study: StudyInput) -> None:
    def run(*pairs: tuple[str, float]) -> np.ndarray:
        result = Pipeline(config({"enhancement": members(*pairs)}), registry).run(cr_study)
        assert result.enhancement is not None
        return result.enhancement.image

    both = run(("demo-denoise-dncnn", 3.0), ("demo-denoise-nlm", 1.0))
    expected = 0.75 * run(("demo-denoise-dncnn", 1.0)) + 0.25 * run(("demo-denoise-nlm", 1.0))
    assert np.abs(both - expected).max() <= 1e-3


@pytest.fixture(scope="module")
def ct_enhanced(
    registry: ModelRegistry, ct_study: StudyInput, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, list[pydicom.Dataset], list[Any]]:
    result = Pipeline(
        config({"enhancement": members(("demo-denoise-dncnn", 1.0))}, "CT"), registry
    ).run(ct_study)
    sources = [pydicom.dcmread(p) for p in ct_study.series[0].files]
    order = {str(f.sop_instance_uid): i for i, f in enumerate(result.source_frames)}
    sources.sort(key=lambda d: order[str(d.SOPInstanceUID)])
    out = tmp_path_factory.mktemp("enhanced")
    options = OutputOptions(overlay=False, pdf=False, sr=False, seg=False)
    produced = produce_results(result, sources, options, out)
    return result, sources, list(produced)


def test_derived_ct_series_keeps_geometry_and_hounsfield_units(ct_enhanced) -> None:
    result, sources, produced = ct_enhanced
    assert [o.kind for o in produced] == [ArtifactKind.ENHANCED] * len(sources)
    assert len({o.series_instance_uid for o in produced}) == 1
    assert produced[0].series_instance_uid != sources[0].SeriesInstanceUID
    for obj, source, frame in zip(produced, sources, result.enhancement.image, strict=True):
        ds = pydicom.dcmread(obj.path)
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        code = ds.DerivationCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == DERIVATION_CODE
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        for keyword in (
            "Rows",
            "Columns",
            "PixelSpacing",
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "RescaleSlope",
            "RescaleIntercept",
        ):
            ours, theirs = np.atleast_1d(ds.get(keyword)), np.atleast_1d(source.get(keyword))
            np.testing.assert_allclose(
                ours.astype(float), theirs.astype(float), rtol=1e-9, atol=1e-9, err_msg=keyword
            )
        hu = pydicom.pixels.apply_rescale(ds.pixel_array, ds)
        source_hu = pydicom.pixels.apply_rescale(source.pixel_array, source)
        assert np.abs(hu - frame).max() <= float(ds.RescaleSlope)  # rounding to stored values
        # still HU: the denoised image's mean stays within a few HU of the source's
        assert abs(float(hu.mean()) - float(source_hu.mean())) < 10.0


def test_derived_series_passes_dciodvfy(
    ct_enhanced, registry: ModelRegistry, cr_study: StudyInput, tmp_path: Path
) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed")
    result = Pipeline(config({"enhancement": members(("demo-denoise-nlm", 1.0))}), registry).run(
        cr_study
    )
    sources = [pydicom.dcmread(p) for p in cr_study.series[0].files]
    options = OutputOptions(overlay=False, pdf=False, sr=False, seg=False)
    cr = list(produce_results(result, sources, options, tmp_path))
    assert [o.kind for o in cr] == [ArtifactKind.ENHANCED]
    for obj in [*ct_enhanced[2], *cr]:
        run = subprocess.run(["dciodvfy", str(obj.path)], capture_output=True, text=True)
        errors = [x for x in (run.stdout + run.stderr).splitlines() if x.startswith("Error")]
        assert errors == [], errors


def test_sr_and_pdf_carry_the_quality_figures(
    registry: ModelRegistry, cr_study: StudyInput, tmp_path: Path
) -> None:
    from tests.node.results.test_conformance import PIXELMED

    result = Pipeline(config({"enhancement": members(("demo-denoise-dncnn", 1.0))}), registry).run(
        cr_study
    )
    assert result.enhancement is not None
    sources = [pydicom.dcmread(p) for p in cr_study.series[0].files]
    produced = produce_results(result, sources, OutputOptions(overlay=False), tmp_path)
    kinds = [o.kind for o in produced]
    assert kinds == [ArtifactKind.PDF, ArtifactKind.SR, ArtifactKind.ENHANCED]
    sr = next(o for o in produced if o.kind is ArtifactKind.SR)
    values: dict[str, float] = {}

    def walk(items: Any) -> None:
        for item in items:
            if item.get("ValueType") == "NUM":
                name = item.ConceptNameCodeSequence[0].CodeValue
                values[name] = float(item.MeasuredValueSequence[0].NumericValue)
            walk(item.get("ContentSequence", []))

    walk(pydicom.dcmread(sr.path).ContentSequence)
    assert values["noise-sd-source"] == pytest.approx(result.enhancement.sigma_before, rel=1e-4)
    assert values["noise-sd-denoise"] == pytest.approx(result.enhancement.sigma_after, rel=1e-4)
    pdf = next(o for o in produced if o.kind is ArtifactKind.PDF)
    assert b"%PDF-" in pydicom.dcmread(pdf.path).EncapsulatedDocument[:8]
    for obj in produced:
        if shutil.which("dciodvfy"):
            run = subprocess.run(["dciodvfy", str(obj.path)], capture_output=True, text=True)
            out = (run.stdout + run.stderr).splitlines()
            assert [x for x in out if x.startswith("Error")] == [], obj.kind
    if shutil.which("java") and Path(PIXELMED[5]).exists():
        run = subprocess.run([*PIXELMED, str(sr.path)], capture_output=True, text=True)
        assert "Error" not in run.stdout + run.stderr, run.stdout[-2000:]
