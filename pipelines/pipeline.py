"""A pipeline: typed stages wired from a definition — select → decode → prepare → infer → post.

``Pipeline.run`` is pure computation (files in, :class:`PipelineResult` out); it writes nothing
and touches no database, so the worker owns retries and persistence.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from pipelines import component_numbers, label_statistics, measurements
from pipelines.contract import (
    AnomalyOutput,
    ClassificationOutput,
    DetectionBox,
    EnhancementOutput,
    ExplanationOutput,
    Finding,
    ModelRun,
    PipelineResult,
    SegmentationOutput,
    Structure,
    StudyInput,
)
from pipelines.errors import PipelineInputError
from pipelines.findings import (
    FindingContext,
    attach_boxes,
    measure_structures,
    segment_findings_and_map,
)
from pipelines.members import Member, ModelProvider, model_run, resolve_members
from pipelines.postprocess import Components, clean_label_map
from pipelines.preprocess.decode import DecodedSeries, decode_series
from pipelines.preprocess.orientation import source_spacing
from pipelines.preprocess.prepare import PreparedInputs
from pipelines.selection import select_series
from pipelines.spec import PipelineConfig
from pipelines.stages import stage
from pipelines.tasks.anomaly import run_anomaly
from pipelines.tasks.classification import classify_from_segmentation, run_classification
from pipelines.tasks.detection import run_detection
from pipelines.tasks.enhancement import run_enhancement
from pipelines.tasks.explanation import run_explanation
from pipelines.tasks.segmentation import run_segmentation

log = logging.getLogger(__name__)


def warm_up_kernels() -> float:
    """Load (or compile) the clean-up's and the measurements' numba kernels now and return the
    seconds it took: ~0.5 s from numba's on-disk cache, several seconds cold, which a worker
    pays at start-up instead of on its first study."""
    started = time.perf_counter()
    label_statistics.warm_up()
    component_numbers.warm_up()
    measurements.warm_up()
    return time.perf_counter() - started


@dataclass
class _Members:
    segmentation: list[Member]
    classification: list[Member]
    detection: list[Member]
    warnings: list[str]
    anomaly: list[Member]
    enhancement: list[Member]

    def all(self) -> list[Member]:
        return [
            *self.segmentation,
            *self.classification,
            *self.detection,
            *self.anomaly,
            *self.enhancement,
        ]


class Pipeline:
    """One configured pipeline; models come warm from the shared provider on each run."""

    def __init__(self, config: PipelineConfig, models: ModelProvider) -> None:
        self.config = config
        self.models = models

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def volumetric(self) -> bool:
        return self.config.selection.dims == 3

    def members(self) -> _Members:
        tasks = self.config.tasks
        warnings: list[str] = []

        def resolve(task_name: str) -> list[Member]:
            task = getattr(tasks, task_name)
            if task is None:
                return []
            return resolve_members(
                task_name, task.members, task.normalised_weights(), self.models, warnings
            )

        return _Members(
            resolve("segmentation"),
            resolve("classification"),
            resolve("detection"),
            warnings,
            resolve("anomaly"),
            resolve("enhancement"),
        )

    def decode(self, study: StudyInput) -> DecodedSeries:
        """The selected series' pixels (raises PipelineInputError when none fits or decodes)."""
        series = select_series(study, self.config.selection)
        decoded = decode_series(series, allow_subset=not self.volumetric)
        if self.volumetric and decoded.is_color:
            raise PipelineInputError(
                f"series {series.series_instance_uid}: colour volumes are not supported"
            )
        return decoded

    def inputs(self, decoded: DecodedSeries) -> PreparedInputs:
        return PreparedInputs(decoded, self.config.preprocessing, self.volumetric)

    def run(self, study: StudyInput) -> PipelineResult:
        started = time.perf_counter()
        with stage("decode"):
            decoded = self.decode(study)
        members = self.members()
        inputs = self.inputs(decoded)
        # denoisers read the source values at native size, not a prepared input
        with stage("prepare"):  # VOI and resampling inside are stages of their own
            inputs.warm([m.model.card for m in members.all() if m.task != "enhancement"])
        runs: list[ModelRun] = []
        tasks = self.config.tasks

        segmentation: SegmentationOutput | None = None
        components: dict[int, Components] = {}  # kept from post-processing for the findings
        if tasks.segmentation is not None:
            seg = run_segmentation(
                tasks.segmentation,
                members.segmentation,
                inputs,
                exclusive=members.segmentation[0].model.card.labels_exclusive,
                # a FRACTIONAL SEG is made of them; else kept only while they are small
                keep_probabilities=True if self.config.outputs.seg_type == "FRACTIONAL" else None,
            )
            runs.extend(model_run(o) for o in seg.outcomes)
            spacing = source_spacing(decoded)
            with stage("post-process"):
                label_map, components = clean_label_map(
                    seg.label_map,
                    len(seg.labels),
                    tasks.segmentation.postprocess,
                    volumetric=self.volumetric,
                    pixel_area_mm2=spacing[1] * spacing[2] if decoded.pixel_spacing_mm else None,
                    voxel_volume_mm3=float(np.prod(spacing)) if decoded.pixel_spacing_mm else None,
                    components_of={lab.value for lab in seg.labels if not lab.is_anatomy},
                )
            segmentation = SegmentationOutput(
                labels=seg.labels,
                label_map=label_map,
                probabilities=seg.probabilities,
                member_pixel_counts=seg.member_pixel_counts,
                heat=seg.heat,
            )
            del seg

        classification: ClassificationOutput | None = None
        explanation: ExplanationOutput | None = None
        if tasks.classification is not None and tasks.classification.source == "segmentation":
            assert segmentation is not None and tasks.segmentation is not None  # spec-checked
            classification = classify_from_segmentation(
                tasks.classification, segmentation, tasks.segmentation.postprocess
            )
        elif tasks.classification is not None:
            classification, cls_outcomes = run_classification(
                tasks.classification, members.classification, inputs
            )
            runs.extend(model_run(o) for o in cls_outcomes)
            explanation = run_explanation(
                tasks.classification, members.classification, inputs, classification
            )

        detections: tuple[DetectionBox, ...] = ()
        if tasks.detection is not None:
            detections, det_outcomes = run_detection(tasks.detection, members.detection, inputs)
            runs.extend(model_run(o) for o in det_outcomes)

        anomaly: AnomalyOutput | None = None
        if tasks.anomaly is not None:
            anomaly, anomaly_outcomes = run_anomaly(tasks.anomaly, members.anomaly, inputs)
            runs.extend(model_run(o) for o in anomaly_outcomes)

        enhancement: EnhancementOutput | None = None
        if tasks.enhancement is not None:
            enhancement, enhancement_outcomes = run_enhancement(
                tasks.enhancement, members.enhancement, decoded
            )
            runs.extend(model_run(o) for o in enhancement_outcomes)

        ctx = FindingContext(
            study_instance_uid=study.study_instance_uid,
            pipeline_name=self.name,
            pipeline_version=self.version,
            values=decoded.values,
            pixel_spacing_mm=decoded.pixel_spacing_mm,
            slice_spacing_mm=decoded.slice_spacing_mm,
            volumetric=self.volumetric,
            intensity_unit=decoded.intensity_unit,
            severity_rules=self.config.severity,
        )
        findings: list[Finding] = []
        structures: list[Structure] = []
        with stage("measure"):
            if segmentation is not None:
                findings, segmentation.finding_map = segment_findings_and_map(
                    ctx, segmentation.label_map, segmentation.labels, components
                )
                structures = measure_structures(ctx, segmentation.label_map, segmentation.labels)
            del components
            findings = attach_boxes(
                ctx, findings, segmentation.label_map if segmentation else None, detections
            )
        warnings = (
            decoded.warnings
            + tuple(members.warnings)
            + tuple(r.fallback_warning for r in runs if r.fallback_warning)
        )
        if decoded.pixel_spacing_mm is None:
            warnings += ("no pixel spacing in the source: areas and volumes are not reported",)
        return PipelineResult(
            pipeline_name=self.name,
            pipeline_version=self.version,
            study_instance_uid=study.study_instance_uid,
            series_instance_uid=decoded.series_instance_uid,
            modality=decoded.modality,
            source_frames=decoded.source_frames,
            pixel_spacing_mm=decoded.pixel_spacing_mm,
            slice_thickness_mm=decoded.slice_thickness_mm,
            model_runs=tuple(runs),
            segmentation=segmentation,
            classification=classification,
            detections=detections,
            findings=tuple(findings),
            structures=tuple(structures),
            explanation=explanation,
            anomaly=anomaly,
            enhancement=enhancement,
            processing_seconds=round(time.perf_counter() - started, 4),
            warnings=warnings,
            review_required=self.config.review_required,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
