"""The demo models as data: names (the pipelines contract), architectures, inputs, labels.

Kept apart from the training code so tests and ``pacsnode evaluate`` read the same definitions
the trainer wrote into the cards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from models.card import CardLabel, CodedConceptModel, InputSpec, IntensitySpec
from models.training.datasets import CT_WINDOW
from models.training.phantoms import FIELD_OF_VIEW_3D_MM, PHANTOM_AXCODES

INPUT_SIZE_2D = 96
# 3D models see a whole phantom abdomen at 5 mm (the node reorients and resamples any series to that,
# and its sliding window covers larger volumes with this roi)
VOLUME_SHAPE_3D = (32, 64, 64)
YOLO_DEFINITION = Path(__file__).with_name("yolo_tiny.yaml")

LESION = CardLabel(
    value=1,
    name="lesion",
    category=CodedConceptModel(
        value="49755003", scheme="SCT", meaning="Morphologically Altered Structure"
    ),
    type=CodedConceptModel(value="52988006", scheme="SCT", meaning="Lesion"),
    color=(255, 64, 0),
)
FINDING = CodedConceptModel(value="404684003", scheme="SCT", meaning="Clinical finding")
CLASS_LABELS = [
    CardLabel(
        value=1,
        name="normal",
        category=FINDING,
        type=CodedConceptModel(value="17621005", scheme="SCT", meaning="Normal"),
        color=(0, 200, 0),
    ),
    CardLabel(
        value=2,
        name="abnormal",
        category=FINDING,
        type=CodedConceptModel(value="263654008", scheme="SCT", meaning="Abnormal"),
        color=(255, 0, 0),
    ),
]
RADIOGRAPH_INPUT = InputSpec(
    dims=2,
    channels=1,
    spatial_size=(INPUT_SIZE_2D, INPUT_SIZE_2D),
    intensity=IntensitySpec(mode="percentile", lower_percentile=0.5, upper_percentile=99.5),
)
CT_INPUT = InputSpec(
    dims=3,
    channels=1,
    spatial_size=VOLUME_SHAPE_3D,
    # the networks train on phantom arrays as they are: (z, y, x) axes running inferior,
    # posterior, left (PHANTOM_AXCODES), the way models.training.dicom_export writes them
    axcodes=PHANTOM_AXCODES,
    pixdim=tuple(f / n for f, n in zip(FIELD_OF_VIEW_3D_MM, VOLUME_SHAPE_3D, strict=True)),  # type: ignore[arg-type]
    intensity=IntensitySpec(mode="window", center=CT_WINDOW[0], width=CT_WINDOW[1]),
)

CLASSIFICATION_WEIGHTS = {
    "demo-cls-densenet": 0.42,
    "demo-cls-resnet": 0.26,
    "demo-cls-efficientnet": 0.32,
}
CLASSIFICATION_THRESHOLD = 0.449
# demo-3d's study-level decision (``source: segmentation``): p(abnormal) reaching the 3D pair's
# own segmentation threshold, so "abnormal" means a lesion the post-processing would keep or nearly
STUDY_CLASSIFICATION_THRESHOLD = 0.5
SEGMENTATION_WEIGHTS = {
    "demo-seg-unet": 0.5,
    "demo-seg-segresnet": 0.5,
    "demo-seg3d-unet": 0.5,
    "demo-seg3d-segresnet": 0.5,
}


@dataclass(frozen=True)
class DemoModel:
    name: str
    task: Literal["segmentation", "classification", "detection"]
    framework: Literal["monai", "timm", "ultralytics"]
    architecture: str
    arguments: dict[str, Any]
    epochs: int
    lr: float = 3e-3
    batch_size: int = 16
    labels: list[CardLabel] = field(default_factory=lambda: [LESION])
    input: InputSpec = RADIOGRAPH_INPUT
    weights_file: str = "model.pt"


DEMO_MODELS: list[DemoModel] = [
    DemoModel(
        "demo-seg-unet",
        "segmentation",
        "monai",
        "UNet",
        {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 2,
            "channels": [8, 16, 32],
            "strides": [2, 2],
            "num_res_units": 1,
        },
        epochs=4,
        lr=1e-2,
        batch_size=8,
    ),
    DemoModel(
        "demo-seg-segresnet",
        "segmentation",
        "monai",
        "SegResNet",
        {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 2,
            "init_filters": 8,
            "blocks_down": [1, 1, 1],
            "blocks_up": [1, 1],
        },
        epochs=4,
        lr=1e-2,
        batch_size=8,
    ),
    DemoModel(
        "demo-cls-densenet",
        "classification",
        "timm",
        "densenet121",
        {"growth_rate": 8, "block_config": [2, 2, 2, 2]},
        epochs=8,
        labels=CLASS_LABELS,
    ),
    DemoModel(
        "demo-cls-resnet",
        "classification",
        "timm",
        "test_resnet",
        {},
        epochs=8,
        labels=CLASS_LABELS,
    ),
    # efficientnet needs a higher rate and longer schedule: at 8 epochs / 3e-3 it stayed near
    # chance on held-out phantoms (AUROC 0.57) and pulled the weighted ensemble below resnet
    DemoModel(
        "demo-cls-efficientnet",
        "classification",
        "timm",
        "test_efficientnet",
        {},
        epochs=40,
        lr=1e-2,
        labels=CLASS_LABELS,
    ),
    DemoModel(
        "demo-det-yolo",
        "detection",
        "ultralytics",
        "yolo11 (scaled down, yolo_tiny.yaml)",
        {"conf": 0.25, "iou": 0.5},
        epochs=200,
    ),
    # appended, not inserted: each model's training seed is the base seed + 1000 x its position
    DemoModel(
        "demo-seg3d-unet",
        "segmentation",
        "monai",
        "UNet",
        {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 2,
            "channels": [8, 16, 32],
            "strides": [2, 2],
            "num_res_units": 1,
        },
        epochs=30,
        lr=1e-2,
        batch_size=4,
        input=CT_INPUT,
    ),
    DemoModel(
        "demo-seg3d-segresnet",
        "segmentation",
        "monai",
        "SegResNet",
        # no residual blocks at full resolution: on a CPU those 3D convolutions made a step
        # 4x slower (4.5 s against 1.2 s for a batch of 4) for a phantom-sized task.
        # It sits on the "predict background" plateau for longer than the UNet: 20 epochs
        # gave held-out Dice 0.30, 60 epochs 0.72 (about 15 min on one CPU thread)
        {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 2,
            "init_filters": 8,
            "blocks_down": [0, 1, 1],
            "blocks_up": [1, 0],
        },
        epochs=60,
        lr=1e-2,
        batch_size=4,
        input=CT_INPUT,
    ),
]


def demo_model(name: str) -> DemoModel:
    return next(m for m in DEMO_MODELS if m.name == name)
