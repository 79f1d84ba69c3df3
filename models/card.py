"""Model cards: one YAML file per AI model that says what it is, how to feed it and how good it is.

A card is the only thing a user writes to add a model (next to its weights file), so it is
validated strictly: an unknown key, a missing SHA-256 or a label without SNOMED CT codes is refused
with a message naming the card and the key. The SHA-256 ties the card to exactly one weights file;
it is checked on load (see :mod:`models.loaders`) so a swapped file never runs under an old card's
metrics and Device UID.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.domain import CodedConcept

log = logging.getLogger(__name__)

DEMO_DISCLAIMER = "demo weights trained on synthetic phantoms — not for clinical use"
CARD_FILE_NAME = "card.yaml"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_UID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


class ModelLoadError(RuntimeError):
    """A model cannot be loaded: bad card, missing weights, SHA-256 mismatch, framework error."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class CodedConceptModel(_Strict):
    """A coded concept as written in a card (``value``/``scheme``/``meaning``)."""

    value: str = Field(min_length=1)
    scheme: str = Field("SCT", min_length=1)
    meaning: str = Field(min_length=1)

    @property
    def scheme_designator(self) -> str:
        """The DICOM name of ``scheme``, so a card concept reads like :class:`CodedConcept`."""
        return self.scheme

    def to_domain(self) -> CodedConcept:
        return CodedConcept(self.value, self.scheme, self.meaning)


class CardLabel(_Strict):
    """One output label: value 1..L for segmentation/detection, class index+1 for classification."""

    value: int = Field(ge=1)
    name: str = Field(min_length=1)
    category: CodedConceptModel
    type: CodedConceptModel
    color: tuple[int, int, int] = (255, 0, 0)

    @field_validator("color")
    @classmethod
    def _rgb(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in value):
            raise ValueError("each colour component must be 0..255")
        return value


class IntensitySpec(_Strict):
    """How raw pixel values become network input.

    ``window``: clip to centre±width/2 and scale to [0, 1] (CT in HU, radiographs).
    ``percentile``: clip to the [lower, upper] percentiles and scale to [0, 1] (MR, unknown units).
    ``zscore``: subtract the mean and divide by the standard deviation of the image.
    ``mean``/``std`` are then applied per channel (``(x - mean) / std``), e.g. ImageNet-style.
    """

    mode: Literal["window", "percentile", "zscore"] = "percentile"
    center: float | None = None
    width: float | None = None
    lower_percentile: float = Field(0.5, ge=0, le=100)
    upper_percentile: float = Field(99.5, ge=0, le=100)
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])

    @model_validator(mode="after")
    def _window_complete(self) -> IntensitySpec:
        if self.mode == "window" and (self.center is None or not self.width or self.width <= 0):
            raise ValueError("intensity mode 'window' needs center and a positive width")
        if self.lower_percentile >= self.upper_percentile:
            raise ValueError("lower_percentile must be below upper_percentile")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class InputSpec(_Strict):
    """What the network expects; pipelines pre-process to exactly this."""

    dims: Literal[2, 3]
    channels: int = Field(1, ge=1)
    spatial_size: tuple[int, ...]  # 2D: model input size (H, W); 3D: sliding-window roi (D, H, W)
    spacing_mm: tuple[float, ...] | None = None  # 3D resampling target (z, y, x)
    intensity: IntensitySpec = Field(default_factory=IntensitySpec)

    @model_validator(mode="after")
    def _sizes_match_dims(self) -> InputSpec:
        if len(self.spatial_size) != self.dims or any(s < 1 for s in self.spatial_size):
            raise ValueError(
                f"spatial_size needs {self.dims} positive sizes, got {self.spatial_size}"
            )
        if self.spacing_mm is not None and (
            len(self.spacing_mm) != self.dims or any(s <= 0 for s in self.spacing_mm)
        ):
            raise ValueError(f"spacing_mm needs {self.dims} positive values")
        return self


class AnomalyCalibration(_Strict):
    """The decision threshold of an anomaly model: the ``percentile`` of its scores on ``images``
    held-out NORMAL images (a score at or above it is "anomalous")."""

    threshold: float
    percentile: float = Field(95.0, gt=0, lt=100)
    images: int = Field(ge=1)


class ModelCard(_Strict):
    """Everything the node needs to know about one AI model (see module docstring)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(min_length=1)
    task: Literal["segmentation", "classification", "detection", "anomaly"]
    # sklearn: HOG + Isolation Forest (joblib); padim: PaDiM over a timm backbone (npz)
    framework: Literal["monai", "timm", "ultralytics", "torchscript", "nnunet", "sklearn", "padim"]
    architecture: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    weights: Path
    sha256: str
    # timm train.py checkpoints carry both the raw and the EMA weights; true takes the EMA ones
    ema: bool = False
    # one softmax over background and the labels (arg-max decides), as the loaders compute it;
    # false: independent labels, each thresholded on its own (overlapping structures)
    labels_exclusive: bool = True
    input: InputSpec
    labels: list[CardLabel] = Field(min_length=1)
    # anomaly models: the threshold calibrated on held-out normal images (see AnomalyCalibration)
    anomaly: AnomalyCalibration | None = None
    device_uid: str
    manufacturer: str = "pacsnode project"
    disclaimer: str = ""
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    card_path: Path | None = Field(None, exclude=True)  # where it was read from (not written)

    @field_validator("sha256", mode="before")
    @classmethod
    def _sha_text(cls, value: object) -> object:
        if isinstance(value, int | float):
            raise ValueError(
                'YAML read the SHA-256 as a number (all digits); quote it: sha256: "..."'
            )
        return value

    @field_validator("sha256")
    @classmethod
    def _sha_hex(cls, value: str) -> str:
        value = value.strip().lower()
        if not _SHA256_RE.match(value):
            raise ValueError("must be 64 hexadecimal characters (SHA-256 of the weights file)")
        return value

    @field_validator("device_uid")
    @classmethod
    def _uid(cls, value: str) -> str:
        if len(value) > 64 or not _UID_RE.match(value):
            raise ValueError(f"{value!r} is not a valid DICOM UID")
        return value

    @model_validator(mode="after")
    def _labels_unique(self) -> ModelCard:
        values = [label.value for label in self.labels]
        if len(set(values)) != len(values):
            raise ValueError(f"label values must be unique, got {values}")
        return self

    @model_validator(mode="after")
    def _anomaly_consistent(self) -> ModelCard:
        anomaly_framework = self.framework in ("sklearn", "padim")
        if self.task == "anomaly" and self.anomaly is None:
            raise ValueError("an anomaly model needs anomaly: {threshold, percentile, images}")
        if (self.task == "anomaly") != anomaly_framework:
            raise ValueError(
                "frameworks sklearn and padim are for task anomaly, and task anomaly needs one"
            )
        if self.task != "anomaly" and self.anomaly is not None:
            raise ValueError("anomaly: calibration is only for task anomaly")
        return self

    @property
    def weights_path(self) -> Path:
        """The weights file, relative paths resolved against the card's folder."""
        if self.weights.is_absolute() or self.card_path is None:
            return self.weights
        return self.card_path.parent / self.weights

    @property
    def class_names(self) -> list[str]:
        return [label.name for label in sorted(self.labels, key=lambda lab: lab.value)]


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, streamed so large weights do not load twice into memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_card(path: Path) -> ModelCard:
    """Parse and validate one card; raise :class:`ModelLoadError` naming the file and the key."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"model card {path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"model card {path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"model card {path}: must hold a mapping at the top level")
    try:
        return ModelCard.model_validate({**data, "card_path": path})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'card'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ModelLoadError(f"model card {path}: {problems}") from exc


def card_files(models_dir: Path) -> list[Path]:
    """Cards in a models directory: ``<name>/card.yaml`` folders and loose ``<name>.yaml`` files."""
    if not models_dir.is_dir():
        return []
    found = [p for p in sorted(models_dir.glob(f"*/{CARD_FILE_NAME}")) if p.is_file()]
    found += [
        p
        for p in sorted(models_dir.glob("*.yaml")) + sorted(models_dir.glob("*.yml"))
        if p.is_file()
    ]
    return found


def load_cards(models_dir: Path) -> dict[str, ModelCard]:
    """Every valid card under ``models_dir`` by name; invalid cards are logged and skipped.

    Skipping (not raising) keeps one broken drop-in from taking every other model offline;
    ``pacsnode models check`` shows the refused cards with :func:`scan_cards`.
    """
    cards, _errors = scan_cards(models_dir)
    return cards


def scan_cards(models_dir: Path) -> tuple[dict[str, ModelCard], dict[Path, str]]:
    """Valid cards by name, and the error message for each card file that was refused."""
    cards: dict[str, ModelCard] = {}
    errors: dict[Path, str] = {}
    for path in card_files(models_dir):
        try:
            card = read_card(path)
        except ModelLoadError as exc:
            log.warning("%s", exc)
            errors[path] = str(exc)
            continue
        if card.name in cards:
            message = f"model card {path}: duplicate name {card.name!r} (first: {cards[card.name].card_path})"
            log.warning("%s", message)
            errors[path] = message
            continue
        cards[card.name] = card
    return cards, errors


def card_to_yaml(card: ModelCard) -> str:
    """The card as YAML, in field order, ready to write next to its weights."""
    data = card.model_dump(mode="json", exclude={"card_path"})
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def write_card(card: ModelCard, path: Path) -> None:
    """Write a card atomically (a half-written card would take the model offline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(card_to_yaml(card), encoding="utf-8")
    tmp.replace(path)
