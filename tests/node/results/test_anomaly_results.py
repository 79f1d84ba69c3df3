"""The anomaly score in the result objects: SR (TID 1501 group with private, identified codes),
PDF and the stored result; the SR passes the same validators as every other one."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from core.domain import ArtifactKind
from node.results.produce import OutputOptions, produce_results
from node.results.store import load_result, save_result
from pipelines.contract import AnomalyOutput, PipelineResult
from tests.node.results.conftest import load_sources
from tests.node.results.factories import make_result
from tests.node.results.test_conformance import PIXELMED, _need
from tests.node.results.test_report_text import _pdf_text, _sr_texts


def _with_anomaly(result: PipelineResult, score: float) -> PipelineResult:
    frames = len(result.source_frames)
    shape = (frames, *result.segmentation.label_map.shape[1:]) if result.segmentation else None
    anomaly_map = np.linspace(0, score, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    return replace(
        result,
        anomaly=AnomalyOutput(
            score=score,
            threshold=9.075966,
            percentile=95.0,
            frame_scores=(score,) * frames,
            member_scores={"demo-anomaly-padim": score},
            map=anomaly_map,
        ),
    )


def _measurements(sr: pydicom.Dataset) -> dict[str, float]:
    """Every numeric measurement in the report by its concept's (value, scheme)."""
    found: dict[str, float] = {}

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            if item.ValueType == "NUM":
                name = item.ConceptNameCodeSequence[0]
                value = float(item.MeasuredValueSequence[0].NumericValue)
                found[f"{name.CodeValue}^{name.CodingSchemeDesignator}"] = value
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    return found


@pytest.mark.parametrize(
    ("kind", "with_findings", "score"),
    [("cr-monochrome1", False, 12.5), ("cr-monochrome1", True, 3.25), ("synthetic-ct", True, 12.5)],
)
def test_sr_and_pdf_carry_the_anomaly_score(
    tmp_path: Path, kind: str, with_findings: bool, score: float
) -> None:
    sources = load_sources(kind)
    result = _with_anomaly(make_result(sources, with_findings=with_findings), score)
    produced = produce_results(result, sources, OutputOptions(), tmp_path)
    sr_path = next(o.path for o in produced if o.kind == ArtifactKind.SR)
    sr = pydicom.dcmread(sr_path)
    values = _measurements(sr)
    assert values["anomaly-score^99PACSNODE"] == pytest.approx(score)
    assert values["anomaly-thresh^99PACSNODE"] == pytest.approx(9.075966)
    scheme = sr.CodingSchemeIdentificationSequence[0]
    assert scheme.CodingSchemeDesignator == "99PACSNODE" and scheme.CodingSchemeName
    decision = "Abnormal" if score >= 9.075966 else "Normal"
    assert _sr_texts(sr_path)["AI anomaly detection result"] == [decision]
    pdf = next(o.path for o in produced if o.kind == ArtifactKind.PDF)
    text = _pdf_text(pdf)
    expected = "anomalous" if score >= 9.075966 else "normal"
    assert f"Anomaly: {expected} (score {score:.3g}, threshold 9.08" in text


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cr-monochrome1", "synthetic-ct"])
def test_sr_with_anomaly_validates(tmp_path: Path, kind: str) -> None:
    """dciodvfy 0 errors (every object), dsrdump clean, pixelmed no TID 1500 errors."""
    _need("dciodvfy")
    _need("dsrdump")
    sources = load_sources(kind)
    for with_findings in (True, False):
        result = _with_anomaly(make_result(sources, with_findings=with_findings), 12.5)
        out = tmp_path / str(with_findings)
        produced = produce_results(result, sources, OutputOptions(), out)
        for obj in produced:
            run = subprocess.run(["dciodvfy", str(obj.path)], capture_output=True, text=True)
            errors = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")]
            assert errors == [], f"{obj.kind.value}: {errors}"
        sr = next(o for o in produced if o.kind == ArtifactKind.SR)
        run = subprocess.run(["dsrdump", str(sr.path)], capture_output=True, text=True)
        assert run.returncode == 0 and run.stderr.strip() == "", run.stderr
        _need("java")
        run = subprocess.run([*PIXELMED, str(sr.path)], capture_output=True, text=True, timeout=180)
        errors = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")]
        assert errors == [], "\n".join(errors[:5])


def test_store_round_trip_keeps_score_and_map(tmp_path: Path) -> None:
    sources = load_sources("cr-monochrome1")
    result = _with_anomaly(make_result(sources, with_findings=True), 12.5)
    save_result(result, tmp_path)
    loaded = load_result(tmp_path)
    assert loaded.anomaly is not None and result.anomaly is not None
    assert loaded.anomaly.score == 12.5 and loaded.anomaly.decision == "anomalous"
    assert loaded.anomaly.member_scores == {"demo-anomaly-padim": 12.5}
    assert loaded.anomaly.map is not None
    assert np.array_equal(loaded.anomaly.map, result.anomaly.map)
    assert loaded.summary()["anomaly_decision"] == "anomalous"


def test_result_without_anomaly_loads(tmp_path: Path) -> None:
    save_result(make_result(load_sources("cr-monochrome1")), tmp_path)
    assert load_result(tmp_path).anomaly is None
