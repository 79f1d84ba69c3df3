"""Pipeline definitions: validated YAML, one file per pipeline, several per node.

This module is deliberately pure (pydantic + PyYAML, no torch): routing and the console import it
to decide which pipelines a study gets and to show/edit their settings without loading any model.
A bad definition raises :class:`core.config.ConfigError` naming the file and the dotted key, so the
admin fixes it from the message alone.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.config import ConfigError
from core.domain import SeriesFacts

DEVICE_PATTERN = re.compile(r"^(cpu|auto|cuda|cuda:\d+|mps)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeriesRule(_Strict):
    """One way a series can qualify; every condition given must hold (lists: any member)."""

    modality: tuple[str, ...] = ()
    sop_class_uid: tuple[str, ...] = ()
    image_type: tuple[str, ...] = ()  # every value listed must be present in ImageType
    orientation: tuple[Literal["AXIAL", "SAGITTAL", "CORONAL", "OBLIQUE"], ...] = ()
    series_description_regex: str | None = None
    min_slices: int = Field(1, ge=1)  # instances x frames
    max_slices: int | None = Field(None, ge=1)
    max_frames_per_instance: int | None = Field(None, ge=1)

    @field_validator("series_description_regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value

    def matches(self, series: SeriesFacts) -> bool:
        if self.modality and series.modality.upper() not in {m.upper() for m in self.modality}:
            return False
        if self.sop_class_uid and series.sop_class_uid not in self.sop_class_uid:
            return False
        present = {v.upper() for v in series.image_type}
        if any(v.upper() not in present for v in self.image_type):
            return False
        if self.orientation and (series.orientation or "").upper() not in self.orientation:
            return False
        if self.series_description_regex and not re.search(
            self.series_description_regex, series.series_description or "", re.IGNORECASE
        ):
            return False
        frames = max(series.number_of_frames, 1)
        slices = max(series.instance_count, 1) * frames
        if slices < self.min_slices or (self.max_slices is not None and slices > self.max_slices):
            return False
        return not (
            self.max_frames_per_instance is not None and frames > self.max_frames_per_instance
        )


class SelectionSpec(_Strict):
    """Input selection: a series fits when ANY rule matches (a YAML list or a single mapping)."""

    rules: tuple[SeriesRule, ...] = Field(min_length=1)
    dims: Literal[2, 3] = 2  # 2: each image on its own; 3: the series as one stacked volume

    def matches(self, series: SeriesFacts) -> bool:
        return any(rule.matches(series) for rule in self.rules)


class Window(_Strict):
    center: float
    width: float = Field(gt=0)


class PreprocessingSpec(_Strict):
    """Which VOI turns stored values into the [0, 1] image a model sees.

    ``model`` (default): the model card's own intensity spec (window/percentile/z-score), because
    that is how the model was trained. ``file``: the file's VOI LUT or window when it has one (else
    the card's). ``pipeline``: always ``window`` (e.g. a site's preferred CT window). The card's
    mean/std normalisation is applied after any of them.
    """

    voi: Literal["model", "file", "pipeline"] = "model"
    window: Window | None = None

    @model_validator(mode="after")
    def _window_when_needed(self) -> PreprocessingSpec:
        if self.voi == "pipeline" and self.window is None:
            raise ValueError("voi 'pipeline' needs a window {center, width}")
        return self


class MemberSpec(_Strict):
    """One ensemble member: a model card name, its (un-normalised) weight and its device."""

    model: str
    weight: float = Field(1.0, gt=0)
    device: str = "auto"
    # used (with a warning in the result) when ``model`` is not installed, e.g. a 2D model run
    # slice-wise until a site installs the 3D one
    fallback_model: str | None = None
    # this member's label (class) names -> the task's names (its first member's), for members
    # trained with other names or another order; without it, members must agree exactly
    label_map: dict[str, str] = Field(default_factory=dict)
    # test-time augmentation: ``flip`` averages the probabilities of the input mirrored along
    # every combination of ``flip_axes`` (spatial axes of the network input, 0-based; empty: all),
    # each mirrored back first — nnU-Net's mirroring, 2^axes forward passes
    tta: Literal["none", "flip"] = "none"
    flip_axes: tuple[int, ...] = ()
    # fp16/bf16: autocast (mixed precision) on the member's device; fp16 needs CUDA and falls
    # back to fp32 with a warning elsewhere, bf16 also runs on the CPU
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    # classification: the layer Grad-CAM uses for this member (overrides the card's explain_layer)
    explain_layer: str | None = None

    @field_validator("device")
    @classmethod
    def _device_known(cls, value: str) -> str:
        if not DEVICE_PATTERN.match(value):
            raise ValueError("must be cpu, auto, cuda, cuda:N or mps")
        return value

    @model_validator(mode="after")
    def _flip_axes(self) -> MemberSpec:
        if self.flip_axes and self.tta != "flip":
            raise ValueError("flip_axes needs tta: flip")
        if len(set(self.flip_axes)) != len(self.flip_axes) or any(
            not 0 <= a <= 2 for a in self.flip_axes
        ):
            raise ValueError(
                f"flip_axes are distinct spatial axes 0, 1 (2D) or 0, 1, 2 (3D), got "
                f"{list(self.flip_axes)}"
            )
        return self


class _TaskSpec(_Strict):
    members: tuple[MemberSpec, ...] = Field(min_length=1)
    batch_size: int = Field(8, ge=1)  # slices per forward pass for 2D models on volumes

    @field_validator("members")
    @classmethod
    def _unique_models(cls, members: tuple[MemberSpec, ...]) -> tuple[MemberSpec, ...]:
        names = [m.model for m in members]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model(s) listed twice: {dupes}")
        return members

    def normalised_weights(self) -> tuple[float, ...]:
        total = sum(m.weight for m in self.members)
        return tuple(m.weight / total for m in self.members)


class PostprocessSpec(_Strict):
    threshold: float = Field(0.5, gt=0, lt=1)  # on the ensemble probability of each label
    label_thresholds: dict[str, float] = Field(default_factory=dict)  # label name -> threshold
    min_component_mm2: float = Field(0.0, ge=0)  # 2D components (area); ignored without spacing
    min_component_mm3: float = Field(0.0, ge=0)  # 3D components of volumes (volume)
    min_component_pixels: int = Field(1, ge=1)
    fill_holes: bool = True
    keep_largest: bool = False
    # the largest N components are kept: a failing model's speckle must not become 5000 findings
    max_components: int = Field(100, ge=1)

    @field_validator("label_thresholds")
    @classmethod
    def _in_range(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0 < v < 1}
        if bad:
            raise ValueError(f"thresholds must lie in (0, 1): {bad}")
        return value

    def threshold_for(self, label_name: str) -> float:
        return self.label_thresholds.get(label_name, self.threshold)


class SegmentationTask(_TaskSpec):
    postprocess: PostprocessSpec = Field(default_factory=PostprocessSpec)
    sw_overlap: float = Field(0.25, ge=0, lt=1)  # sliding window for 3D models
    sw_batch_size: int = Field(2, ge=1)


class ClassificationTask(_TaskSpec):
    """Study-level normal/abnormal decision.

    ``source: models`` (default) runs the classifier members. ``source: segmentation`` has no
    members: the study's p(abnormal) is derived from the segmentation ensemble (see
    :func:`pipelines.tasks.classification.classify_from_segmentation`) — the honest choice where
    no classifier was trained on the modality.
    """

    members: tuple[MemberSpec, ...] = ()
    source: Literal["models", "segmentation"] = "models"
    positive_class: str = "abnormal"
    threshold: float = Field(0.5, gt=0, lt=1)
    volume_aggregation: Literal["max", "mean"] = "max"  # 2D classifiers on a volume's slices
    # a map of what drove the decision, per member and weighted like the probabilities, written
    # as a Parametric Map (none: no map, no object). gradcam/gradcampp fall back to occlusion for
    # a member without a spatial layer (see pipelines/tasks/explanation.py)
    explain: Literal["gradcam", "gradcampp", "occlusion", "none"] = "none"

    @model_validator(mode="after")
    def _members_match_source(self) -> ClassificationTask:
        if self.source == "models" and not self.members:
            raise ValueError("classification needs at least one member (or source: segmentation)")
        if self.source == "segmentation" and self.members:
            raise ValueError(
                "classification with source: segmentation takes its probability from the "
                "segmentation task: list no members"
            )
        if self.source == "segmentation" and self.positive_class != "abnormal":
            raise ValueError("classification from segmentation decides normal/abnormal only")
        if self.source == "segmentation" and self.explain != "none":
            raise ValueError("explain needs classifier members (source: models)")
        return self


class DetectionTask(_TaskSpec):
    iou_threshold: float = Field(0.55, gt=0, lt=1)
    skip_threshold: float = Field(0.05, ge=0, lt=1)  # member boxes below this are dropped
    score_threshold: float = Field(0.25, ge=0, lt=1)  # fused boxes below this are dropped

    @field_validator("members")
    @classmethod
    def _no_tta_or_precision(cls, members: tuple[MemberSpec, ...]) -> tuple[MemberSpec, ...]:
        """Detectors run through their framework's own predictor (boxes, not probability maps):
        flipped boxes would need fusing, not averaging, and ultralytics picks its own precision."""
        for member in members:
            if member.tta != "none" or member.precision != "fp32":
                raise ValueError(
                    f"{member.model}: tta and precision apply to segmentation and "
                    "classification members, not detection"
                )
        return members


class AnomalyTask(_TaskSpec):
    """Unsupervised anomaly score and map from models fitted on normal images only.

    The decision threshold is each model card's calibrated one (``anomaly.threshold``);
    ``threshold`` overrides it for a one-member task (a site recalibrating on its own normals).
    Several members are combined on scores divided by each one's threshold (see
    :class:`pipelines.contract.AnomalyOutput`). ``map: false`` keeps only the scores.
    """

    threshold: float | None = Field(None, gt=0)
    map: bool = True

    @model_validator(mode="after")
    def _threshold_one_member(self) -> AnomalyTask:
        if self.threshold is not None and len(self.members) > 1:
            raise ValueError(
                "threshold overrides one model's calibrated threshold: give it only with one "
                "member (several members are combined on their own calibrated thresholds)"
            )
        return self


class EnhancementTask(_TaskSpec):
    """Denoising: each member (a denoiser card: non-local means, a residual CNN) denoises every
    frame at its native size in the source's units; the output is the weighted mean, written as a
    derived series (see :class:`pipelines.contract.EnhancementOutput`)."""

    series_description: str = Field("Denoised", min_length=1, max_length=64)

    @field_validator("members")
    @classmethod
    def _plain_members(cls, members: tuple[MemberSpec, ...]) -> tuple[MemberSpec, ...]:
        for member in members:
            if member.tta != "none" or member.precision != "fp32" or member.label_map:
                raise ValueError(
                    f"{member.model}: tta, precision and label_map do not apply to denoisers"
                )
        return members


class TasksSpec(_Strict):
    segmentation: SegmentationTask | None = None
    classification: ClassificationTask | None = None
    detection: DetectionTask | None = None
    anomaly: AnomalyTask | None = None
    enhancement: EnhancementTask | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> TasksSpec:
        if not (
            self.segmentation
            or self.classification
            or self.detection
            or self.anomaly
            or self.enhancement
        ):
            raise ValueError(
                "a pipeline needs at least one of "
                "segmentation/classification/detection/anomaly/enhancement"
            )
        if (
            self.classification is not None
            and self.classification.source == "segmentation"
            and self.segmentation is None
        ):
            raise ValueError("classification source: segmentation needs a segmentation task")
        return self

    def members(self) -> list[tuple[str, MemberSpec]]:
        out: list[tuple[str, MemberSpec]] = []
        for task_name in ("segmentation", "classification", "detection", "anomaly", "enhancement"):
            task = getattr(self, task_name)
            if task is not None:
                out.extend((task_name, m) for m in task.members)
        return out


class SeverityRules(_Strict):
    """Defaults: Low = small and round; Moderate = medium area or medium circularity; High = large
    area or low circularity. 3D findings use the volume thresholds when given, else area."""

    moderate_area_mm2: float = Field(100.0, gt=0)
    high_area_mm2: float = Field(500.0, gt=0)
    moderate_volume_mm3: float | None = Field(None, gt=0)
    high_volume_mm3: float | None = Field(None, gt=0)
    moderate_below_circularity: float = Field(0.8, gt=0, le=1)
    high_below_circularity: float = Field(0.5, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> SeverityRules:
        if self.high_area_mm2 < self.moderate_area_mm2:
            raise ValueError("high_area_mm2 must be >= moderate_area_mm2")
        if self.high_below_circularity > self.moderate_below_circularity:
            raise ValueError("high_below_circularity must be <= moderate_below_circularity")
        if (self.moderate_volume_mm3 is None) != (self.high_volume_mm3 is None):
            raise ValueError("give both moderate_volume_mm3 and high_volume_mm3, or neither")
        if self.high_volume_mm3 is not None and self.high_volume_mm3 < (
            self.moderate_volume_mm3 or 0
        ):
            raise ValueError("high_volume_mm3 must be >= moderate_volume_mm3")
        return self


class OutputsSpec(_Strict):
    seg_type: Literal["BINARY", "FRACTIONAL"] = "BINARY"
    # per_finding: each finding its own SEG segment (the SR cites it); per_label: one per label
    seg_segments: Literal["per_finding", "per_label"] = "per_finding"
    omit_empty_frames: bool = True
    overlay: bool = True
    # no overlay when nothing is on it (no findings, mask or boxes); the job notes why
    skip_empty_overlay: bool = True
    pdf: bool = True
    sr: bool = True


class PipelineConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: str = Field(min_length=1, max_length=16)
    description: str = ""
    enabled: bool = True
    review_required: bool = False
    # the Celery queue (device class) its jobs go to with ``jobs.engine: celery``; a worker
    # consumes only the queues it names (``pacsnode worker --queues gpu``)
    queue: str = Field("cpu", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    selection: SelectionSpec
    preprocessing: PreprocessingSpec = Field(default_factory=PreprocessingSpec)
    tasks: TasksSpec
    severity: SeverityRules = Field(default_factory=SeverityRules)
    outputs: OutputsSpec = Field(default_factory=OutputsSpec)
    source_file: Path | None = None

    @field_validator("selection", mode="before")
    @classmethod
    def _selection_shapes(cls, value: Any) -> Any:
        """Accept a single rule mapping or a list of rules as well as ``{rules: [...], dims}``."""
        if isinstance(value, list):
            return {"rules": value}
        if isinstance(value, dict) and "rules" not in value:
            rule = {k: v for k, v in value.items() if k != "dims"}
            out: dict[str, Any] = {"rules": [rule]}
            if "dims" in value:
                out["dims"] = value["dims"]
            return out
        return value


def parse_pipeline_config(data: Any, source: str) -> PipelineConfig:
    """Validate one definition; ``source`` (a file name) prefixes every error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a pipeline definition must be a mapping")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or 'definition'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError(f"{source}: " + "; ".join(problems)) from exc


def load_pipeline_configs(pipelines_dir: Path) -> dict[str, PipelineConfig]:
    """Every ``*.yaml``/``*.yml`` definition in ``pipelines_dir`` by pipeline name."""
    if not pipelines_dir.is_dir():
        raise ConfigError(f"pipelines_dir: {pipelines_dir} is not a directory")
    configs: dict[str, PipelineConfig] = {}
    files = sorted([*pipelines_dir.glob("*.yaml"), *pipelines_dir.glob("*.yml")])
    for path in files:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read pipeline definition: {exc}") from exc
        cfg = parse_pipeline_config(data, str(path)).model_copy(update={"source_file": path})
        if cfg.name in configs:
            raise ConfigError(
                f"{path}: name: pipeline {cfg.name!r} is already defined in "
                f"{configs[cfg.name].source_file}"
            )
        configs[cfg.name] = cfg
    return configs


def apply_overrides(cfg: PipelineConfig, overrides: Mapping[str, object]) -> PipelineConfig:
    """Return ``cfg`` with the console's admin edits applied, re-validated.

    ``overrides`` is a nested mapping merged over the definition, e.g.::

        {"enabled": False,
         "tasks": {"classification": {"threshold": 0.5,
                                      "members": {"demo-cls-resnet": {"device": "cuda:0",
                                                                      "weight": 0.3}}}},
         "tasks.segmentation.postprocess.threshold": 0.6}

    Members are addressed by model name (a mapping) so reordering the YAML cannot misapply an
    edit; dotted keys are accepted too. An override that names an unknown key or model raises
    :class:`ConfigError`, so a stale row cannot silently do nothing.
    """
    base = cfg.model_dump(mode="python", exclude={"source_file"})
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        target = nested
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        _merge_into(target, {parts[-1]: value}, path="")
    merged = copy.deepcopy(base)
    _merge_into(merged, nested, path="", validate_keys=True)
    source = f"overrides for pipeline {cfg.name!r}"
    return parse_pipeline_config(merged, source).model_copy(update={"source_file": cfg.source_file})


def _merge_into(
    target: dict[str, Any], patch: dict[str, Any], path: str, validate_keys: bool = False
) -> None:
    for key, value in patch.items():
        where = f"{path}.{key}" if path else key
        if validate_keys and key not in target:
            raise ConfigError(f"override {where}: no such setting")
        current = target.get(key)
        if key == "members" and isinstance(value, dict) and isinstance(current, (list, tuple)):
            by_name = {m["model"]: m for m in current}
            for model, member_patch in value.items():
                if model not in by_name:
                    raise ConfigError(f"override {where}.{model}: no such member")
                if not isinstance(member_patch, dict):
                    raise ConfigError(f"override {where}.{model}: expected a mapping")
                _merge_into(by_name[model], member_patch, f"{where}.{model}", validate_keys)
            target[key] = list(by_name.values())
        elif isinstance(value, dict) and isinstance(current, dict):
            free_keys = key == "label_thresholds"  # label names are data, not settings
            _merge_into(current, value, where, validate_keys and not free_keys)
        else:
            target[key] = value
