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


LabelKind = Literal["anatomy", "finding"]


class CardLabel(_Strict):
    """One output label: value 1..L for segmentation/detection, class index+1 for classification.

    ``kind`` says what a segment of it is: a ``finding`` (a lesion: one finding per connected
    component, measured and graded by severity) or ``anatomy`` (an organ or bone a model outlines:
    one SEG segment and a volume, never a "lesion" nor a severity). ``type_modifier`` carries the
    laterality of paired organs (SNOMED CT Left/Right), as DICOM's Segmented Property Type Modifier.
    """

    value: int = Field(ge=1)
    name: str = Field(min_length=1)
    category: CodedConceptModel
    type: CodedConceptModel
    type_modifier: CodedConceptModel | None = None
    kind: LabelKind = "finding"
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


_AXIS_PAIRS = ("LR", "AP", "SI")


class InputSpec(_Strict):
    """What the network expects; pipelines pre-process to exactly this.

    3D networks declare the orientation and spacing they were trained in, in MONAI's terms:
    ``axcodes`` names the direction each array axis of the network input runs towards (``RAS``:
    the first index grows towards the patient's right, the second anterior, the third superior, as
    after MONAI's ``Orientationd``); ``pixdim`` is the spacing in mm along those same axes (MONAI's
    ``Spacingd`` ``pixdim``: x, y, z for ``RAS``). The node reorients and resamples every series to
    that grid and maps the output back to the source slices, so the same anatomy stored in any
    plane or slice order gives the same result. ``spatial_size`` of a 3D card is the
    sliding-window roi along the same axes. Without ``axcodes`` a 3D network gets the volume in
    storage order (frame, row, column) at its own spacing: not orientation-aware.
    """

    dims: Literal[2, 3]
    channels: int = Field(1, ge=1)
    spatial_size: tuple[int, ...]  # 2D: model input size (H, W); 3D: sliding-window roi
    axcodes: str | None = None  # 3D: orientation of the network's array axes, e.g. "RAS"
    pixdim: tuple[float, float, float] | None = None  # 3D: mm along the axcodes axes
    intensity: IntensitySpec = Field(default_factory=IntensitySpec)

    @model_validator(mode="before")
    @classmethod
    def _old_spacing_key(cls, data: Any) -> Any:
        """``spacing_mm`` was (z, y, x) in storage order, the reverse of MONAI's ``pixdim``:
        pasting a bundle's value there was silently wrong, so the key is refused, not guessed.
        A ``null`` value (written by older ``card_to_yaml``) says nothing and is dropped."""
        if isinstance(data, dict) and "spacing_mm" in data:
            value = data["spacing_mm"]
            if value is not None:
                raise ValueError(
                    f"spacing_mm ({value}) is no longer read: it was (z, y, x) in DICOM storage "
                    "order. Write the orientation and spacing the network was trained in, as "
                    "MONAI names them: 'axcodes' (e.g. RAS, as after Orientationd) and 'pixdim' "
                    "(mm along those axes, e.g. [x, y, z] for RAS, as in Spacingd). The node's old "
                    "behaviour for axial series is axcodes: SPL with pixdim = the spacing_mm "
                    "numbers in the same order"
                )
            data = {k: v for k, v in data.items() if k != "spacing_mm"}
        return data

    @field_validator("axcodes")
    @classmethod
    def _axcodes(cls, value: str | None) -> str | None:
        if value is None:
            return None
        codes = value.strip().upper()
        if len(codes) != 3 or sorted(
            next((i for i, pair in enumerate(_AXIS_PAIRS) if c in pair), -1) for c in codes
        ) != [0, 1, 2]:
            raise ValueError(
                f"{value!r} is not an orientation: three letters, one of L/R, one of A/P and one "
                "of S/I (MONAI's axcodes, e.g. RAS)"
            )
        return codes

    @model_validator(mode="after")
    def _sizes_match_dims(self) -> InputSpec:
        if len(self.spatial_size) != self.dims or any(s < 1 for s in self.spatial_size):
            raise ValueError(
                f"spatial_size needs {self.dims} positive sizes, got {self.spatial_size}"
            )
        if self.dims == 2 and (self.axcodes is not None or self.pixdim is not None):
            raise ValueError("axcodes and pixdim are for 3D models (2D models run frame by frame)")
        if self.pixdim is not None:
            if self.axcodes is None:
                raise ValueError(
                    "pixdim needs axcodes: the spacing is given along the axes of the reoriented "
                    "volume (e.g. axcodes: RAS, pixdim: [x, y, z])"
                )
            if any(s <= 0 for s in self.pixdim):
                raise ValueError(f"pixdim needs 3 positive values, got {self.pixdim}")
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
    task: Literal["segmentation", "classification", "detection", "anomaly", "enhancement"]
    # sklearn: HOG + Isolation Forest (joblib); padim: PaDiM over a timm backbone (npz);
    # classical: non-local means (JSON parameters); dncnn: residual denoising CNN (state_dict)
    framework: Literal[
        "monai",
        "timm",
        "ultralytics",
        "torchscript",
        "nnunet",
        "sklearn",
        "padim",
        "classical",
        "dncnn",
    ]
    architecture: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    weights: Path
    sha256: str
    # timm train.py checkpoints carry both the raw and the EMA weights; true takes the EMA ones
    ema: bool = False
    # one softmax over background and the labels (arg-max decides), as the loaders compute it;
    # false: independent labels, each thresholded on its own (overlapping structures)
    labels_exclusive: bool = True
    # the layer Grad-CAM explains a classifier at (a module name of the network); None: the last
    # module with a spatial output, found by tracing one forward pass (pipelines/tasks/explanation)
    explain_layer: str | None = None
    input: InputSpec
    # may be empty only for a MONAI bundle: its labels then come from metadata.json's channel_def
    # with codes from the shipped SNOMED CT map (models/label_codes.py); listed labels override
    labels: list[CardLabel] = Field(default_factory=list)
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
        if not self.labels and self.framework != "monai" and self.task != "enhancement":
            raise ValueError(
                "labels: at least one label is needed (only a MONAI bundle may take its labels "
                "from its metadata.json channel_def)"
            )
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
        if (self.task == "enhancement") != (self.framework in ("classical", "dncnn")):
            raise ValueError(
                "frameworks classical and dncnn are for task enhancement (denoisers), and task "
                "enhancement needs one"
            )
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


def refused_card_name(path: Path) -> str:
    """The name a refused card goes by: its folder (``<name>/card.yaml``) or its file's stem."""
    return path.parent.name if path.name == CARD_FILE_NAME else path.stem


def scan_cards(
    models_dir: Path, *, warn: bool = True
) -> tuple[dict[str, ModelCard], dict[Path, str]]:
    """Valid cards by name, and the error message for each card file that was refused (logged as
    a warning unless ``warn`` is False: a health check asked every few seconds must not repeat
    what start-up said once)."""
    cards: dict[str, ModelCard] = {}
    errors: dict[Path, str] = {}
    for path in card_files(models_dir):
        try:
            card = read_card(path)
        except ModelLoadError as exc:
            if warn:
                log.warning("%s", exc)
            errors[path] = str(exc)
            continue
        if card.name in cards:
            message = f"model card {path}: duplicate name {card.name!r} (first: {cards[card.name].card_path})"
            if warn:
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
