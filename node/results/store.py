"""Persist a PipelineResult beside its DICOM objects: result.json + arrays.npz (+ heatmap.npz).

The console's review page reloads it; JSON holds everything but arrays (PipelineResult's own
export plus the fields needed to rebuild it), the compressed npz holds label map/probabilities.
When the pipeline produced probabilities, ``heatmap.npz`` keeps their compact display form: per
pixel the highest label probability as uint8 (0-255), a quarter of the float32 size per label and
what the console's heat map shows, without loading every label's floats for one frame.
"""

from __future__ import annotations

import json
import time
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.domain import CodedConcept, Severity
from pipelines.contract import (
    AnomalyOutput,
    ClassificationOutput,
    DetectionBox,
    EnhancementOutput,
    ExplanationOutput,
    Finding,
    LabelSpec,
    Measurements,
    ModelRun,
    PipelineResult,
    SegmentationOutput,
    SourceFrame,
    Structure,
)

RESULT_JSON = "result.json"
ARRAYS_NPZ = "arrays.npz"
HEATMAP_NPZ = "heatmap.npz"
EXPLANATION_NPZ = "explanation.npz"  # the classification's explanation map, float32 0..1
ANOMALY_NPZ = "anomaly.npz"  # the anomaly map (frames, rows, cols) float32


def heatmap_of(probabilities: np.ndarray) -> np.ndarray:
    """(frames, rows, cols) uint8: the highest of the (labels, frames, rows, cols) probabilities
    per pixel, 0-1 scaled to 0-255."""
    highest = probabilities.max(axis=0)  # a new array: scaled in place, no further temporaries
    np.clip(highest, 0.0, 1.0, out=highest)
    highest *= 255.0
    return np.rint(highest, out=highest).astype(np.uint8)


# deflate an array only when a sample of it shrinks below this fraction at zlib's fastest level
_DEFLATE_IF_BELOW = 0.8
_SAMPLE_CHUNKS, _SAMPLE_CHUNK_BYTES = 8, 128 * 1024


def _worth_deflating(data: memoryview) -> bool:
    """Whether deflate pays for ``data``: a sample of evenly spaced chunks, compressed at level 1.

    A model's float32 probabilities are mantissa noise to deflate: 100 × 512² of them shrank by
    10 % for ~3 s of CPU, most of a CT job's time after inference. Label, finding and heat maps
    (mostly zeros) shrink to a fraction of a percent for a few tens of milliseconds."""
    if len(data) <= _SAMPLE_CHUNKS * _SAMPLE_CHUNK_BYTES:
        sample = bytes(data)
    else:
        step = len(data) // _SAMPLE_CHUNKS
        sample = b"".join(
            bytes(data[i * step : i * step + _SAMPLE_CHUNK_BYTES]) for i in range(_SAMPLE_CHUNKS)
        )
    return len(zlib.compress(sample, 1)) < _DEFLATE_IF_BELOW * len(sample)


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with deflate (at zlib's fastest level: the maps it pays for shrink
    to under 1 % either way) only where it pays (:func:`_worth_deflating`); the others stored as
    they are. Same ``.npz`` format: ``np.load`` reads either, entry by entry. Written to a
    temporary name, then renamed."""
    tmp = path.with_name(path.name + ".tmp.npz")
    with zipfile.ZipFile(
        tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True, compresslevel=1
    ) as archive:
        for name, value in arrays.items():
            array = np.ascontiguousarray(value)
            entry: str | zipfile.ZipInfo = f"{name}.npy"  # by name: the archive's deflate
            if not _worth_deflating(array.reshape(-1).view(np.uint8).data):
                entry = zipfile.ZipInfo(f"{name}.npy", time.localtime()[:6])  # ZIP_STORED
            with archive.open(entry, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, array, allow_pickle=False)
    tmp.replace(path)


def save_result(result: PipelineResult, directory: Path) -> Path:
    """Write result.json (+ arrays.npz when there is a segmentation); returns the JSON path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = result.to_json_dict()
    if result.segmentation is not None:
        arrays: dict[str, Any] = {"label_map": result.segmentation.label_map}
        if result.segmentation.probabilities is not None:
            arrays["probabilities"] = result.segmentation.probabilities
        if result.segmentation.finding_map is not None:
            arrays["finding_map"] = result.segmentation.finding_map
        if result.segmentation.heat is not None:
            arrays["heat"] = result.segmentation.heat
        write_npz(directory / ARRAYS_NPZ, arrays)
        # the probabilities, or where many labels made the pipeline keep only their per-pixel
        # maximum (``SegmentationOutput.heat``), that maximum
        shown = result.segmentation.probabilities
        if shown is None and result.segmentation.heat is not None:
            shown = result.segmentation.heat[None]
        if shown is not None:
            write_npz(directory / HEATMAP_NPZ, {"heat": heatmap_of(shown)})
    if result.explanation is not None:
        write_npz(directory / EXPLANATION_NPZ, {"maps": result.explanation.maps.astype(np.float32)})
    if result.anomaly is not None and result.anomaly.map is not None:
        write_npz(directory / ANOMALY_NPZ, {"map": result.anomaly.map})
    path = directory / RESULT_JSON
    tmp_json = directory / (RESULT_JSON + ".tmp")
    tmp_json.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp_json.replace(path)
    return path


def _concept(data: dict[str, Any]) -> CodedConcept:
    return CodedConcept(data["value"], data["scheme_designator"], data["meaning"])


def _label(data: dict[str, Any]) -> LabelSpec:
    modifier = data.get("type_modifier")
    return LabelSpec(
        data["value"],
        data["name"],
        _concept(data["category"]),
        _concept(data["type"]),
        tuple(data["color_rgb"]),  # type: ignore[arg-type]
        data.get("kind", "finding"),  # results saved before labels had a kind were all findings
        _concept(modifier) if modifier else None,
    )


def _measurements(data: dict[str, Any]) -> Measurements:
    m = dict(data)
    m["bbox"] = tuple(m["bbox"])
    return Measurements(**m)


def _structure(data: dict[str, Any]) -> Structure:
    return Structure(
        data["tracking_id"],
        data["tracking_uid"],
        _label(data["label"]),
        _measurements(data["measurements"]),
        tuple(data["frame_indices"]),
    )


def _box(data: dict[str, Any]) -> DetectionBox:
    return DetectionBox(
        data["frame_index"],
        data["x0"],
        data["y0"],
        data["x1"],
        data["y1"],
        _label(data["label"]),
        data["score"],
        dict(data["member_scores"]),
    )


def _finding(data: dict[str, Any]) -> Finding:
    return Finding(
        data["tracking_id"],
        data["tracking_uid"],
        _label(data["label"]),
        _measurements(data["measurements"]),
        Severity(data["severity"]),
        data["segment_number"],
        tuple(data["frame_indices"]),
        _box(data["box"]) if data["box"] else None,
        data.get("component"),
    )


def load_heatmap(directory: Path) -> np.ndarray | None:
    """The result's heat map (:func:`heatmap_of`), None when the pipeline produced no
    probabilities; derived from arrays.npz for results saved before heatmap.npz existed.
    FileNotFoundError when the result is not on disk."""
    directory = Path(directory)
    if (directory / HEATMAP_NPZ).is_file():
        with np.load(directory / HEATMAP_NPZ) as saved:
            return np.asarray(saved["heat"])
    if not (directory / RESULT_JSON).is_file():
        raise FileNotFoundError(directory / RESULT_JSON)
    if not (directory / ARRAYS_NPZ).is_file():
        return None
    with np.load(directory / ARRAYS_NPZ) as arrays:
        if "probabilities" in arrays:
            return heatmap_of(arrays["probabilities"])
        if "heat" in arrays:
            return heatmap_of(arrays["heat"][None])
        return None


def load_explanation_maps(directory: Path) -> np.ndarray | None:
    """(frames, rows, cols) float32 0..1, None when the result has no explanation."""
    path = Path(directory) / EXPLANATION_NPZ
    if not path.is_file():
        return None
    with np.load(path) as saved:
        return np.asarray(saved["maps"])


def load_anomaly_map(directory: Path) -> np.ndarray | None:
    """(frames, rows, cols) float32 in the anomaly score's unit, None when there is none."""
    path = Path(directory) / ANOMALY_NPZ
    if not path.is_file():
        return None
    with np.load(path) as saved:
        return np.asarray(saved["map"])


def _explanation(directory: Path, data: dict[str, Any] | None) -> ExplanationOutput | None:
    maps = load_explanation_maps(directory) if data is not None else None
    if data is None or maps is None:
        return None
    return ExplanationOutput(
        data["method"],
        data["class_name"],
        maps,
        dict(data["member_methods"]),
        dict(data["member_layers"]),
    )


def load_result(directory: Path) -> PipelineResult:
    """Rebuild the PipelineResult written by :func:`save_result`."""
    directory = Path(directory)
    data = json.loads((directory / RESULT_JSON).read_text())
    segmentation = None
    if data["segmentation"] is not None:
        with np.load(directory / ARRAYS_NPZ) as arrays:
            label_map = arrays["label_map"]
            probabilities = arrays.get("probabilities", None)
            finding_map = arrays.get("finding_map", None)
            heat = arrays.get("heat", None)
        s = data["segmentation"]
        segmentation = SegmentationOutput(
            tuple(_label(lbl) for lbl in s["labels"]),
            label_map,
            probabilities,
            s["member_pixel_counts"],
            finding_map,
            heat,
        )
    classification = None
    if data["classification"] is not None:
        c = data["classification"]
        classification = ClassificationOutput(
            tuple(c["classes"]),
            tuple(c["probabilities"]),
            c["threshold"],
            c["positive_class"],
            {k: tuple(v) for k, v in c["member_probabilities"].items()},
            tuple(_concept(code) for code in c["class_codes"]),
            c.get("source", "models"),  # results stored before the field existed
        )
    anomaly = None
    if data.get("anomaly") is not None:  # results stored before the task existed have none
        anomaly = AnomalyOutput.from_json_dict(data["anomaly"], load_anomaly_map(directory))
    spacing = data["pixel_spacing_mm"]
    return PipelineResult(
        pipeline_name=data["pipeline_name"],
        pipeline_version=data["pipeline_version"],
        study_instance_uid=data["study_instance_uid"],
        series_instance_uid=data["series_instance_uid"],
        modality=data["modality"],
        source_frames=tuple(SourceFrame(**f) for f in data["source_frames"]),
        pixel_spacing_mm=tuple(spacing) if spacing else None,  # type: ignore[arg-type]
        slice_thickness_mm=data["slice_thickness_mm"],
        model_runs=tuple(ModelRun(**r) for r in data["model_runs"]),
        segmentation=segmentation,
        classification=classification,
        detections=tuple(_box(d) for d in data["detections"]),
        findings=tuple(_finding(f) for f in data["findings"]),
        structures=tuple(_structure(st) for st in data.get("structures", [])),
        explanation=_explanation(directory, data.get("explanation")),
        anomaly=anomaly,
        enhancement=(  # results stored before the task existed have none
            EnhancementOutput.from_json_dict(data["enhancement"])
            if data.get("enhancement") is not None
            else None
        ),
        processing_seconds=data["processing_seconds"],
        warnings=tuple(data["warnings"]),
        review_required=data["review_required"],
        created_at=data.get("created_at", ""),
    )
