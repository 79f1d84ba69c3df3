"""The typed contract between pipelines and result writers.

A pipeline turns a :class:`StudyInput` into a :class:`PipelineResult`; ``node.results`` turns that into
DICOM (SEG, SR, PDF, overlay) without knowing anything about models. Masks and boxes are already
mapped back to the *source* geometry: frame ``i`` of a mask belongs to ``source_frames[i]``.

Arrays stay in memory (NumPy); :meth:`PipelineResult.to_json_dict` gives the JSON export (no
arrays) and :meth:`PipelineResult.save`/:meth:`load` persist the whole result beside the study.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.domain import CodedConcept, Severity


@dataclass(frozen=True)
class SourceSeries:
    """One series of a study as the pipeline sees it: header datasets sorted for stacking."""

    series_instance_uid: str
    modality: str
    sop_class_uid: str
    files: tuple[Path, ...]  # sorted (ImagePositionPatient along the normal, else InstanceNumber)
    series_description: str = ""


@dataclass(frozen=True)
class StudyInput:
    """What a job hands a pipeline: a complete study on disk."""

    study_instance_uid: str
    series: tuple[SourceSeries, ...]


@dataclass(frozen=True)
class SourceFrame:
    """Which source image (and frame, for multi-frame sources) a mask frame or box belongs to."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    frame_number: int | None = None  # 1-based, only for multi-frame sources
    # where a radiologist finds it: the scanner's numbers, not our (inferior→superior) index
    instance_number: int | None = None
    series_number: int | None = None
    position_mm: float | None = None  # along the slice normal (z for axial), None for 2D

    def describe(self) -> str:
        """ "image 17 (series 3, 42.5 mm)" or "frame 4 of image 1"; "" when nothing is known."""
        parts = []
        if self.series_number is not None:
            parts.append(f"series {self.series_number}")
        if self.position_mm is not None:
            parts.append(f"{self.position_mm:.1f} mm")
        where = f" ({', '.join(parts)})" if parts else ""
        image = f"image {self.instance_number}" if self.instance_number is not None else "image"
        if self.frame_number is not None:
            return f"frame {self.frame_number} of {image}{where}"
        return f"{image}{where}" if self.instance_number is not None or parts else ""


@dataclass(frozen=True)
class LabelSpec:
    """A segmentation/detection/classification label with its SEG/SR codes (from the model card)."""

    value: int  # 1-based segment number / class index + 1
    name: str
    category: CodedConcept
    type: CodedConcept
    color_rgb: tuple[int, int, int] = (255, 0, 0)
    # "finding": each connected component is a lesion with severity; "anatomy": one measured
    # structure (segment + volume), never a lesion (see models/card.py CardLabel)
    kind: str = "finding"
    type_modifier: CodedConcept | None = None  # laterality of a paired organ (SNOMED Left/Right)

    @property
    def is_anatomy(self) -> bool:
        return self.kind == "anatomy"


@dataclass(frozen=True)
class ModelRun:
    """Where and how one ensemble member really ran (reported in SR, PDF and the console)."""

    task: str  # segmentation | classification | detection
    model_name: str
    model_version: str
    framework: str
    weight: float  # normalised ensemble weight
    device_requested: str
    device_used: str
    weights_sha256: str
    device_uid: str  # IHE AIR Device UID from the model card
    seconds: float
    fallback_warning: str | None = None


@dataclass(frozen=True)
class Measurements:
    """Per finding, in source geometry and original units."""

    area_mm2: float | None
    area_pct: float | None  # of the image (2D) or of the imaged volume's area per slice
    volume_mm3: float | None  # 3D only
    mean_intensity: float | None
    max_intensity: float | None
    intensity_unit: str  # "HU" for CT, "[arb'U]" otherwise (UCUM)
    circularity: float | None  # 4*pi*A/P**2, 1.0 for a disc
    pixel_count: int
    bbox: tuple[int, int, int, int, int, int]  # frame0, row0, col0, frame1, row1, col1 (inclusive)


@dataclass(frozen=True)
class DetectionBox:
    """A fused detection box in source pixel coordinates (column x, row y; inclusive-exclusive)."""

    frame_index: int  # index into PipelineResult.source_frames
    x0: float
    y0: float
    x1: float
    y1: float
    label: LabelSpec
    score: float
    member_scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """One lesion/object: a connected component of a segment, or a detection box."""

    tracking_id: str
    tracking_uid: str
    label: LabelSpec
    measurements: Measurements
    severity: Severity
    segment_number: int | None  # the label value it belongs to (None: detection only)
    frame_indices: tuple[int, ...]  # indices into PipelineResult.source_frames
    box: DetectionBox | None = None
    # its value in SegmentationOutput.finding_map (None: detection only, or an older result)
    component: int | None = None


@dataclass(frozen=True)
class Structure:
    """One anatomical structure a model outlined: a segment and its measurements, no severity.

    All pixels of the label count, however many pieces they form (a rib cut by the field of view
    is one rib): ``measurements`` are of the whole label, its largest cross-section for the area.
    """

    tracking_id: str  # the label's name
    tracking_uid: str
    label: LabelSpec
    measurements: Measurements
    frame_indices: tuple[int, ...]


@dataclass(frozen=True)
class ClassificationOutput:
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]  # weighted ensemble mean, sums to 1
    threshold: float  # decision threshold on the positive (last non-normal) class
    positive_class: str
    member_probabilities: dict[str, tuple[float, ...]] = field(default_factory=dict)
    class_codes: tuple[CodedConcept, ...] = ()
    # "models": the classifier members decided; "segmentation": derived from the segmentation
    # ensemble (no classifier ran), which the conclusion words as a "lesion score"
    source: str = "models"

    @property
    def top_class(self) -> str:
        return self.classes[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float:
        return float(max(self.probabilities))

    @property
    def positive_probability(self) -> float:
        return float(self.probabilities[self.classes.index(self.positive_class)])

    @property
    def decision(self) -> str:
        """The thresholded decision, decided by the positive class's own probability.

        ``positive_class`` when its probability reaches the threshold; otherwise the most probable
        of the other classes — never the positive class, even when it is the arg-max of three or
        more classes below its threshold (p = 0.44 with threshold 0.449 is not "abnormal").
        """
        if self.positive_probability >= self.threshold:
            return self.positive_class
        others = [(p, c) for c, p in zip(self.classes, self.probabilities, strict=True)]
        return max((pc for pc in others if pc[1] != self.positive_class), key=lambda pc: pc[0])[1]


@dataclass
class ExplanationOutput:
    """What drove the classification decision: a per-pixel map on the source geometry.

    Each member's map (Grad-CAM, Grad-CAM++ or occlusion sensitivity for the decided class) is
    mapped back to the source grid and scaled to 0..1 per frame; ``maps`` is their weighted mean
    with the members' ensemble weights, so it stays in 0..1 (1: what mattered most).
    """

    method: str  # the pipeline's option: gradcam | gradcampp | occlusion
    class_name: str  # the decision the map explains
    maps: np.ndarray  # (frames, rows, cols) float32 in [0, 1], source geometry
    member_methods: dict[str, str] = field(default_factory=dict)  # what each member really ran
    member_layers: dict[str, str] = field(default_factory=dict)  # its Grad-CAM layer ("" none)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "class_name": self.class_name,
            "shape": list(self.maps.shape),
            "member_methods": dict(self.member_methods),
            "member_layers": dict(self.member_layers),
        }


@dataclass
class EnhancementOutput:
    """A denoised copy of the source series and how much noise it took away.

    ``image`` is (frames, rows, cols) float32 on the source geometry in the source's units (HU stay
    HU): the members' weighted mean. ``sigma_before``/``sigma_after`` are the highest per-frame
    noise σ estimated from the image alone (scikit-image ``estimate_sigma``), in those units —
    the quality figure where no clean reference exists (PSNR/SSIM need one: ``pacsnode
    evaluate`` reports them on phantoms).
    """

    # None in a result read back from the job's store: the pixels live in the derived series
    image: np.ndarray | None
    sigma_before: float
    sigma_after: float
    members: tuple[str, ...]
    series_description: str = "Denoised"

    @property
    def noise_reduction_percent(self) -> float:
        if self.sigma_before <= 0:
            return 0.0
        return 100.0 * (1.0 - self.sigma_after / self.sigma_before)

    def describe(self) -> str:
        """ "denoised: noise σ 31.2 -> 9.8 (-69 %)" for the report and the console."""
        return (
            f"denoised: noise σ {self.sigma_before:.3g} -> {self.sigma_after:.3g} "
            f"({-self.noise_reduction_percent:+.0f} %)"
        )

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "sigma_before": self.sigma_before,
            "sigma_after": self.sigma_after,
            "noise_reduction_percent": round(self.noise_reduction_percent, 2),
            "members": list(self.members),
            "series_description": self.series_description,
            "image_shape": list(self.image.shape) if self.image is not None else None,
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> EnhancementOutput:
        """The quality figures of a stored result (no pixels: see ``image``)."""
        return cls(
            None,
            float(data["sigma_before"]),
            float(data["sigma_after"]),
            tuple(str(m) for m in data["members"]),
            str(data["series_description"]),
        )


@dataclass
class AnomalyOutput:
    """An image-level anomaly score against its calibrated threshold, and where (the map).

    ``score`` is the highest frame score. With one member it is that model's own score and
    ``threshold`` its card's calibrated threshold; with several, each member's score is divided by
    its own threshold first (scores of different methods share no scale) and the threshold is 1.
    ``map`` is (frames, rows, cols) float32 on the source geometry, in the score's unit.
    """

    score: float
    threshold: float
    percentile: float  # the calibration: this percentile of held-out normal images' scores
    frame_scores: tuple[float, ...]
    member_scores: dict[str, float] = field(default_factory=dict)
    normalised: bool = False
    map: np.ndarray | None = None

    @property
    def anomalous(self) -> bool:
        return self.score >= self.threshold

    @property
    def decision(self) -> str:
        return "anomalous" if self.anomalous else "normal"

    def describe(self) -> str:
        """ "anomaly score 12.3 (threshold 10.1): anomalous" for the report and the console."""
        return f"anomaly score {self.score:.3g} (threshold {self.threshold:.3g}): {self.decision}"

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "threshold": self.threshold,
            "percentile": self.percentile,
            "frame_scores": list(self.frame_scores),
            "member_scores": dict(self.member_scores),
            "normalised": self.normalised,
            "decision": self.decision,
            "map_shape": list(self.map.shape) if self.map is not None else None,
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], map_: np.ndarray | None) -> AnomalyOutput:
        return cls(
            float(data["score"]),
            float(data["threshold"]),
            float(data["percentile"]),
            tuple(float(v) for v in data["frame_scores"]),
            {k: float(v) for k, v in data["member_scores"].items()},
            bool(data["normalised"]),
            map_,
        )


@dataclass
class SegmentationOutput:
    labels: tuple[LabelSpec, ...]
    label_map: np.ndarray  # (frames, rows, cols) uint8 (uint16 past 255 labels), 0 = background
    probabilities: np.ndarray | None = None  # (labels, frames, rows, cols) float32 ensemble mean
    member_pixel_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # (frames, rows, cols): each finding's own pixels, value = Finding.component (0 = none), so
    # a SEG can give every finding its own segment; None for results made before it existed
    finding_map: np.ndarray | None = None
    # (frames, rows, cols) float32: the highest label probability per pixel, kept for the heat
    # map instead of ``probabilities`` when those would be too large (many labels, no FRACTIONAL)
    heat: np.ndarray | None = None

    def binary_mask(self, label_value: int) -> np.ndarray:
        return self.label_map == label_value


@dataclass
class PipelineResult:
    pipeline_name: str
    pipeline_version: str
    study_instance_uid: str
    series_instance_uid: str  # the source series the results refer to
    modality: str
    source_frames: tuple[SourceFrame, ...]
    pixel_spacing_mm: tuple[float, float] | None  # row, column spacing
    slice_thickness_mm: float | None
    model_runs: tuple[ModelRun, ...]
    segmentation: SegmentationOutput | None = None
    classification: ClassificationOutput | None = None
    detections: tuple[DetectionBox, ...] = ()
    findings: tuple[Finding, ...] = ()
    structures: tuple[Structure, ...] = ()  # anatomy labels: measured, never lesions
    explanation: ExplanationOutput | None = None  # classification option ``explain``
    anomaly: AnomalyOutput | None = None
    enhancement: EnhancementOutput | None = None
    processing_seconds: float = 0.0
    warnings: tuple[str, ...] = ()
    review_required: bool = False
    # ISO 8601 UTC time the result was made; result writers stamp it as content date/time so a
    # retry rebuilds byte-identical DICOM objects. Empty: writers fall back to "now".
    created_at: str = ""

    @property
    def has_findings(self) -> bool:
        return bool(self.findings)

    def images_of(self, finding: Finding) -> str:
        """The source images a finding spans, by the scanner's InstanceNumber: "12-17" or "14"."""
        return self.images_at(finding.frame_indices)

    def images_at(self, frame_indices: tuple[int, ...]) -> str:
        """The source images of these frame indices by InstanceNumber: "12-17" or "14"."""
        numbers = sorted(
            {n for i in frame_indices if (n := self.source_frames[i].instance_number) is not None}
        )
        if not numbers:
            return ""
        frames = {self.source_frames[i].frame_number for i in frame_indices} - {None}
        if len(numbers) == 1 and frames:  # frames of one multi-frame image
            low, high = min(frames), max(frames)  # type: ignore[type-var]
            span = f"{low}" if low == high else f"{low}-{high}"
            return f"{numbers[0]} (frames {span})"
        return f"{numbers[0]}" if len(numbers) == 1 else f"{numbers[0]}-{numbers[-1]}"

    def key_index_of(self, finding: Finding) -> int:
        """The frame index with the finding's largest cross-section (its key slice)."""
        if finding.segment_number is None and finding.box is not None:  # a detection only
            return finding.box.frame_index
        seg = self.segmentation
        indices = finding.frame_indices or (finding.measurements.bbox[0],)
        if seg is None or len(indices) == 1:
            return indices[0]
        f0, r0, c0, f1, r1, c1 = finding.measurements.bbox
        if seg.finding_map is not None and finding.component is not None:
            box = seg.finding_map[f0 : f1 + 1, r0 : r1 + 1, c0 : c1 + 1] == finding.component
        else:
            box = seg.label_map[f0 : f1 + 1, r0 : r1 + 1, c0 : c1 + 1] == finding.segment_number
        return f0 + int(np.argmax(box.reshape(box.shape[0], -1).sum(axis=1)))

    def key_image_of(self, finding: Finding) -> str:
        return self.source_frames[self.key_index_of(finding)].describe()

    def conclusion(self) -> str:
        """The study's one-line conclusion, combining classification and findings.

        The rule (pipelines/definitions/README.md, "Conclusion"): findings decide what is said
        first ("2 findings (most severe: Severe)" or "no lesion segmented"/"no lesion detected");
        a classifier adds its thresholded decision and the probability of its positive class.
        When the two disagree the text says so instead of contradicting itself: "classifier
        suspicious (abnormal 0.78), no lesion segmented" or "2 findings; classifier not
        suspicious (abnormal 0.12)".
        """
        found = self.findings
        if found:
            worst = max((f.severity for f in found), key=lambda s: _SEVERITY_ORDER.index(s.value))
            text = f"{len(found)} finding{'s' if len(found) != 1 else ''} (most severe: {worst.meaning})"
        elif self.segmentation is not None and not all(
            lab.is_anatomy for lab in self.segmentation.labels
        ):
            text = "no lesion segmented"
        elif self.segmentation is not None:  # an anatomy model: it looks for no lesion
            count = len(self.structures)
            text = f"{count} anatomical structure{'s' if count != 1 else ''} segmented"
        elif (
            self.detections
            or self.model_runs
            and any(r.task == "detection" for r in self.model_runs)
        ):
            text = "no lesion detected"
        else:
            text = ""
        cls = self.classification
        if cls is None:
            return text or "no findings"
        suspicious = cls.decision == cls.positive_class
        verdict = "suspicious" if suspicious else "not suspicious"
        who = "classifier" if cls.source == "models" else "lesion score"
        said = f"{who} {verdict} ({cls.positive_class} {cls.positive_probability:.2f})"
        if not text:  # a classification-only pipeline: its decision is the conclusion
            return f"{who}: {cls.decision} ({cls.positive_class} {cls.positive_probability:.2f})"
        return f"{said}, {text}" if not found else f"{text}; {said}"

    @property
    def discordant(self) -> bool:
        """Classifier and findings disagree (suspicious without findings, or the reverse)."""
        cls = self.classification
        if cls is None or (self.segmentation is None and not self.detections):
            return False
        return (cls.decision == cls.positive_class) != bool(self.findings)

    def to_json_dict(self) -> dict[str, Any]:
        """The result without arrays, for the JSON export, the database summary and the console."""
        data: dict[str, Any] = {
            "pipeline_name": self.pipeline_name,
            "pipeline_version": self.pipeline_version,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "modality": self.modality,
            "source_frames": [asdict(f) for f in self.source_frames],
            "pixel_spacing_mm": self.pixel_spacing_mm,
            "slice_thickness_mm": self.slice_thickness_mm,
            "model_runs": [asdict(r) for r in self.model_runs],
            "detections": [asdict(d) for d in self.detections],
            "findings": [
                {
                    **asdict(f),
                    "severity_meaning": f.severity.meaning,
                    "images": self.images_of(f),
                    "key_image": self.key_image_of(f),
                }
                for f in self.findings
            ],
            "structures": [
                {**asdict(st), "images": self.images_at(st.frame_indices)} for st in self.structures
            ],
            "conclusion": self.conclusion(),
            "processing_seconds": self.processing_seconds,
            "warnings": list(self.warnings),
            "review_required": self.review_required,
            "created_at": self.created_at,
            "classification": None,
            "segmentation": None,
            "explanation": self.explanation.to_json_dict() if self.explanation else None,
            "anomaly": self.anomaly.to_json_dict() if self.anomaly is not None else None,
            "enhancement": (
                self.enhancement.to_json_dict() if self.enhancement is not None else None
            ),
        }
        if self.classification is not None:
            c = self.classification
            data["classification"] = {
                **asdict(c),
                "top_class": c.top_class,
                "confidence": c.confidence,
                "decision": c.decision,
            }
        if self.segmentation is not None:
            s = self.segmentation
            data["segmentation"] = {
                "labels": [asdict(lbl) for lbl in s.labels],
                "shape": list(s.label_map.shape),
                "pixel_counts": _pixel_counts(s),
                "member_pixel_counts": s.member_pixel_counts,
            }
        return json.loads(json.dumps(data, default=_json_default))

    def summary(self) -> dict[str, Any]:
        """Small figures the dashboard charts aggregate (stored on the job row)."""
        c = self.classification
        severities = [f.severity.value for f in self.findings]
        return {
            "top_class": c.top_class if c else None,
            "decision": c.decision if c else None,
            "confidence": c.confidence if c else None,
            "finding_count": len(self.findings),
            "severity": max(severities, key=_SEVERITY_ORDER.index) if severities else None,
            "severity_meaning": Severity(max(severities, key=_SEVERITY_ORDER.index)).meaning
            if severities
            else None,
            "conclusion": self.conclusion(),
            "severities": severities,
            "devices": {r.model_name: r.device_used for r in self.model_runs},
            "fallbacks": [r.fallback_warning for r in self.model_runs if r.fallback_warning],
            "processing_seconds": self.processing_seconds,
            "anomaly_score": self.anomaly.score if self.anomaly else None,
            "anomaly_decision": self.anomaly.decision if self.anomaly else None,
        }


_SEVERITY_ORDER = [s.value for s in Severity]


def _pixel_counts(seg: SegmentationOutput) -> dict[str, int]:
    """Pixels per label from one pass over the map (not one per label: 104 organs)."""
    flat = seg.label_map.reshape(-1)
    top = max([lbl.value for lbl in seg.labels], default=0) + 1
    counts = np.zeros(max(top, int(flat.max(initial=0)) + 1), np.int64)
    for start in range(0, flat.size, 1 << 24):
        chunk = np.bincount(flat[start : start + (1 << 24)], minlength=counts.size)
        counts += chunk[: counts.size]
    return {lbl.name: int(counts[lbl.value]) for lbl in seg.labels}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Severity):
        return value.value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
