"""Sources and hand-built PipelineResults for the result-writer tests.

Until real pipelines land, results are built here from synthetic series (made with pydicom, with
real-world quirks on request) and from real files (pydicom-data CR/CT, the shared GE MR series).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from core.dicom_uids import deterministic_uid
from core.domain import CodedConcept, Severity
from pipelines.contract import (
    ClassificationOutput,
    DetectionBox,
    ExplanationOutput,
    Finding,
    LabelSpec,
    Measurements,
    ModelRun,
    PipelineResult,
    SegmentationOutput,
    SourceFrame,
)
from tests.conftest import SHARED_DATA

MR_SERIES_DIR = SHARED_DATA / "mr-series-ge-adc"

MORPH_ABNORMAL = CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
LESION = LabelSpec(
    1, "lesion", MORPH_ABNORMAL, CodedConcept("52988006", "SCT", "Lesion"), (255, 0, 0)
)
NODULE = LabelSpec(
    2, "nodule", MORPH_ABNORMAL, CodedConcept("27925004", "SCT", "Nodule"), (0, 255, 0)
)


def read_testdata(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom-data file {name} missing"
    return pydicom.dcmread(path)


def mr_series() -> list[Dataset]:
    """The real 20-slice GE MR ADC series, sorted along the slice normal."""
    datasets = [pydicom.dcmread(p) for p in sorted(MR_SERIES_DIR.glob("*.dcm"))]
    return sorted(datasets, key=lambda d: int(d.InstanceNumber))


def synthetic_ct_series(
    slices: int = 4, size: int = 32, quirks: bool = False, seed: int = 0
) -> list[Dataset]:
    """A small CT series with full geometry; ``quirks`` adds real-world header oddities."""
    rng = np.random.default_rng(seed)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for index in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "SYN-001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "F"
        ds.StudyDate, ds.StudyTime = "20240102", "101112"
        ds.AccessionNumber = "ACC-1"
        ds.StudyID = "1"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CT CHEST"
        ds.SeriesNumber, ds.InstanceNumber = 3, index + 1
        ds.Manufacturer = "Synthetic"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-16.0, -16.0, float(index * 2.5)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 2.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.KVP = 120
        ds.PositionReferenceIndicator = ""
        pixels = rng.integers(900, 1200, (size, size), dtype=np.uint16)
        ds.PixelData = pixels.tobytes()
        if quirks:
            ds.SpecificCharacterSet = ""
            ds.PatientName = "DOE, JANE"
            ds.ReferringPhysicianName = "A^B^C^D^E^F"
            del ds.PatientBirthDate, ds.AccessionNumber, ds.StudyID, ds.StudyTime
            ds.PatientSex = "FEMALE"
        datasets.append(ds)
    return datasets


def source_frames_for(sources: Sequence[Dataset]) -> tuple[SourceFrame, ...]:
    if len(sources) == 1 and int(sources[0].get("NumberOfFrames", 1) or 1) > 1:
        ds = sources[0]
        return tuple(
            SourceFrame(ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID, n)
            for n in range(1, int(ds.NumberOfFrames) + 1)
        )
    return tuple(SourceFrame(d.SOPClassUID, d.SOPInstanceUID, d.SeriesInstanceUID) for d in sources)


def _model_runs() -> tuple[ModelRun, ...]:
    return (
        ModelRun(
            "segmentation",
            "tiny-unet",
            "1.2.0",
            "monai",
            0.6,
            "cuda:0",
            "cpu",
            "ab" * 32,
            "2.25.1111",
            0.8,
            "cuda:0 unavailable, ran on cpu",
        ),
        ModelRun(
            "classification",
            "tiny-resnet",
            "0.3.1",
            "timm",
            0.4,
            "cpu",
            "cpu",
            "cd" * 32,
            "2.25.2222",
            0.2,
        ),
    )


def explanation_for(label_map: np.ndarray) -> ExplanationOutput:
    """A smooth 0..1 map peaking at the middle of the frames' lesions (or the image centre)."""
    frames, rows, cols = label_map.shape
    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    maps = np.zeros(label_map.shape, np.float32)
    for index in range(frames):
        ys, xs = np.nonzero(label_map[index])
        cy, cx = (ys.mean(), xs.mean()) if ys.size else (rows / 2, cols / 2)
        sigma = max(rows, cols) / 6
        maps[index] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return ExplanationOutput(
        "gradcam", "abnormal", maps, {"tiny-resnet": "gradcam"}, {"tiny-resnet": "layer4"}
    )


def make_result(
    sources: Sequence[Dataset],
    with_findings: bool = True,
    pipeline_name: str = "demo-lesion",
    pipeline_version: str = "1.0.0",
    two_labels: bool = True,
    explain: bool = False,
) -> PipelineResult:
    """A result with a disc-shaped lesion (and a square nodule) in the source geometry;
    ``explain``: with a Grad-CAM-like explanation map (a blob around the lesion, 0..1)."""
    frames = source_frames_for(sources)
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    label_map = np.zeros((len(frames), rows, cols), np.uint8)
    labels = (LESION, NODULE) if two_labels else (LESION,)
    findings: list[Finding] = []
    boxes: list[DetectionBox] = []
    spacing = tuple(float(v) for v in sources[0].get("PixelSpacing", [1.0, 1.0]))
    if with_findings:
        mid = len(frames) // 2
        yy, xx = np.mgrid[:rows, :cols]
        radius = max(2, min(rows, cols) // 8)
        disc = (yy - rows // 2) ** 2 + (xx - cols // 3) ** 2 <= radius**2
        lesion_frames = sorted({max(mid - 1, 0), mid})
        for f in lesion_frames:
            label_map[f][disc] = LESION.value
        r0, c0 = rows // 6, (2 * cols) // 3
        side = max(2, min(rows, cols) // 10)
        if two_labels:
            label_map[mid, r0 : r0 + side, c0 : c0 + side] = NODULE.value
        area = float(disc.sum() * spacing[0] * spacing[1])
        ys, xs = np.nonzero(disc)
        box = DetectionBox(
            mid,
            float(xs.min()),
            float(ys.min()),
            float(xs.max() + 1),
            float(ys.max() + 1),
            LESION,
            0.87,
            {"tiny-yolo": 0.87},
        )
        boxes.append(box)
        thickness = float(sources[0].get("SliceThickness", 1.0) or 1.0)
        findings.append(
            Finding(
                "lesion-1",
                deterministic_uid(*["lesion-1"]),
                LESION,
                Measurements(
                    area,
                    100.0 * disc.sum() / (rows * cols),
                    area * thickness * len(lesion_frames) if len(lesion_frames) > 1 else None,
                    812.5,
                    1100.0,
                    "HU" if sources[0].Modality == "CT" else "[arb'U]",
                    0.93,
                    int(disc.sum()) * len(lesion_frames),
                    (
                        lesion_frames[0],
                        int(ys.min()),
                        int(xs.min()),
                        lesion_frames[-1],
                        int(ys.max()),
                        int(xs.max()),
                    ),
                ),
                Severity.MODERATE,
                1,
                tuple(lesion_frames),
                box,
            )
        )
        if two_labels:
            findings.append(
                Finding(
                    "nodule-1",
                    deterministic_uid(*["nodule-1"]),
                    NODULE,
                    Measurements(
                        side * side * spacing[0] * spacing[1],
                        1.0,
                        None,
                        400.0,
                        500.0,
                        "[arb'U]",
                        0.78,
                        side * side,
                        (mid, r0, c0, mid, r0 + side - 1, c0 + side - 1),
                    ),
                    Severity.LOW,
                    2,
                    (mid,),
                )
            )
    probabilities = np.stack([(label_map == lbl.value).astype(np.float32) * 0.9 for lbl in labels])
    return PipelineResult(
        pipeline_name=pipeline_name,
        pipeline_version=pipeline_version,
        study_instance_uid=str(sources[0].StudyInstanceUID),
        series_instance_uid=str(sources[0].SeriesInstanceUID),
        modality=str(sources[0].Modality),
        source_frames=frames,
        pixel_spacing_mm=(spacing[0], spacing[1]),
        slice_thickness_mm=float(sources[0].get("SliceThickness", 0) or 0) or None,
        model_runs=_model_runs(),
        segmentation=SegmentationOutput(
            labels, label_map, probabilities, {"tiny-unet": {"lesion": int((label_map == 1).sum())}}
        ),
        classification=ClassificationOutput(
            ("normal", "abnormal"),
            (0.2, 0.8) if with_findings else (0.9, 0.1),
            0.5,
            "abnormal",
            {"tiny-resnet": (0.2, 0.8)},
            (
                CodedConcept("17621005", "SCT", "Normal"),
                CodedConcept("263654008", "SCT", "Abnormal"),
            ),
        ),
        detections=tuple(boxes),
        findings=tuple(findings),
        explanation=explanation_for(label_map) if explain else None,
        processing_seconds=1.25,
        warnings=("cuda:0 unavailable, ran on cpu",),
        created_at="2024-05-06T07:08:09+00:00",
    )


def write_sources(sources: Sequence[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(sources):
        path = folder / f"src{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
