"""A processed study for console tests: the real GE MR ADC series, a real SEG, a held delivery.

Until the full receive → pipeline → results chain is wired end to end, this builds what that chain
leaves behind: Study/Series/Instance rows over copies of the shared sample files, a succeeded job
awaiting review, a highdicom SEG of a lesion on a few slices, the worker's saved ``PipelineResult`` in the
results folder and one HELD delivery per artifact to a folder destination.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr.coding import CodedConcept

from core.config import Settings
from core.domain import CodedConcept as Code
from core.domain import Severity
from node.db.engine import Database
from node.db.orm import Artifact, Delivery, Instance, Job, Series, Study
from node.results.store import save_result
from pipelines.contract import (
    ClassificationOutput,
    DetectionBox,
    Finding,
    LabelSpec,
    Measurements,
    ModelRun,
    PipelineResult,
    SegmentationOutput,
    SourceFrame,
)
from tests.conftest import SHARED_DATA

MR_SERIES = SHARED_DATA / "mr-series-ge-adc"
LESION_SLICES = (8, 9, 10, 11)


@dataclass(frozen=True)
class ProcessedStudy:
    study_uid: str
    series_uid: str
    job_id: int
    seg_path: Path
    frame_count: int
    artifact_id: int  # the SEG's
    delivery_id: int  # the SEG's, held for review


def _lesion_mask(datasets: list[pydicom.Dataset]) -> np.ndarray:
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    mask = np.zeros((len(datasets), rows, cols), dtype=bool)
    yy, xx = np.mgrid[:rows, :cols]
    for i in LESION_SLICES:
        radius = 18 - 3 * abs(i - 9.5)
        mask[i] = (yy - rows * 0.45) ** 2 + (xx - cols * 0.55) ** 2 <= radius**2
    return mask


def _probabilities(mask: np.ndarray) -> np.ndarray:
    """An ensemble's probability for the lesion label, (1, frames, rows, cols): a smooth blob
    peaking inside the lesion and fading out over a few slices and ~30 pixels, so a heat map
    differs from the binary mask."""
    frames, rows, cols = mask.shape
    yy, xx = np.mgrid[:rows, :cols]
    plane = np.exp(-(((yy - rows * 0.45) ** 2 + (xx - cols * 0.55) ** 2) / (2 * 15.0**2)))
    centre = (LESION_SLICES[0] + LESION_SLICES[-1]) / 2
    depth = np.exp(-((np.arange(frames) - centre) ** 2) / (2 * 2.0**2))
    return (0.95 * depth[:, None, None] * plane[None]).astype(np.float32)[None]


def _write_seg(datasets: list[pydicom.Dataset], path: Path) -> hd.seg.Segmentation:
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=CodedConcept(
            "49755003", "SCT", "Morphologically Altered Structure"
        ),
        segmented_property_type=CodedConcept("52988006", "SCT", "Lesion"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="demo-seg",
            version="1.0",
            family=CodedConcept("123109", "DCM", "Artificial Intelligence"),
        ),
    )
    # the scanner writes IOP with float jitter between slices; highdicom wants one orientation
    sources = [copy.deepcopy(ds) for ds in datasets]
    for ds in sources:
        ds.ImageOrientationPatient = datasets[0].ImageOrientationPatient
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=_lesion_mask(datasets),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="pacsnode project",
        manufacturer_model_name="demo-seg",
        software_versions="0.1.0",
        device_serial_number="1",
        omit_empty_frames=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return seg


def _pipeline_result(datasets: list[pydicom.Dataset], mask: np.ndarray) -> PipelineResult:
    """What the worker would have saved for this study: one lesion, a classification, a box."""
    frames = tuple(
        SourceFrame(
            str(ds.SOPClassUID),
            str(ds.SOPInstanceUID),
            str(ds.SeriesInstanceUID),
            instance_number=int(ds.InstanceNumber),
            series_number=int(ds.SeriesNumber),
        )
        for ds in datasets
    )
    label = LabelSpec(
        1,
        "lesion",
        Code("49755003", "SCT", "Morphologically Altered Structure"),
        Code("52988006", "SCT", "Lesion"),
    )
    box = DetectionBox(9, 120.0, 100.0, 160.0, 135.0, label, 0.81)
    lesion_frames = tuple(int(i) for i in np.flatnonzero(mask.any(axis=(1, 2))))
    measurements = Measurements(
        812.5,
        1.2,
        4100.0,
        950.0,
        1400.0,
        "[arb'U]",
        0.83,
        int(mask.sum()),
        (8, 90, 120, 11, 140, 170),
    )
    finding = Finding(
        "lesion-1", "2.25.4242", label, measurements, Severity.MODERATE, 1, lesion_frames, box
    )
    first = datasets[0]
    return PipelineResult(
        pipeline_name="demo-mr",
        pipeline_version="1.0",
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        modality="MR",
        source_frames=frames,
        pixel_spacing_mm=tuple(float(v) for v in first.PixelSpacing),  # type: ignore[arg-type]
        slice_thickness_mm=float(first.get("SliceThickness", 1.0) or 1.0),
        model_runs=(
            ModelRun(
                "segmentation",
                "demo-seg",
                "1.0",
                "monai",
                1.0,
                "cpu",
                "cpu",
                "ab" * 32,
                "2.25.1111",
                1.1,
            ),
        ),
        segmentation=SegmentationOutput((label,), mask.astype(np.uint8), _probabilities(mask)),
        classification=ClassificationOutput(("normal", "lesion"), (0.13, 0.87), 0.5, "lesion"),
        detections=(box,),
        findings=(finding,),
        processing_seconds=1.25,
        review_required=True,
        created_at="2026-01-01T00:00:00+00:00",
    )


def build_processed_study(
    settings: Settings, db: Database, destination: str = "archive"
) -> ProcessedStudy:
    files = sorted(MR_SERIES.glob("*.dcm"))
    datasets = [pydicom.dcmread(f) for f in files]
    datasets.sort(key=lambda ds: int(ds.InstanceNumber))
    first = datasets[0]
    study_uid, series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    spool = settings.spool_dir / study_uid / series_uid
    spool.mkdir(parents=True, exist_ok=True)
    with db.write() as session:
        study = Study(
            study_instance_uid=study_uid,
            patient_id=str(first.get("PatientID", "")),
            patient_name=str(first.get("PatientName", "")) or "Anon^Phantom",
            accession_number="ACC-MR-1",
            study_date=str(first.get("StudyDate", "")),
            study_description="MR prostate ADC",
            modalities="MR",
            state="processed",
            instance_count=len(datasets),
            calling_ae="GE_MR",
            source="dicom",
        )
        session.add(study)
        session.flush()
        series = Series(
            study_pk=study.id,
            series_instance_uid=series_uid,
            modality="MR",
            series_number=int(first.get("SeriesNumber", 1) or 1),
            series_description=str(first.get("SeriesDescription", "")),
            instance_count=len(datasets),
        )
        session.add(series)
        session.flush()
        for ds, src in zip(datasets, files, strict=False):
            target = spool / f"{ds.SOPInstanceUID}.dcm"
            shutil.copyfile(src, target)
            session.add(
                Instance(
                    series_pk=series.id,
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                    instance_number=int(ds.InstanceNumber),
                    path=str(target.relative_to(settings.data_dir)),
                    size_bytes=target.stat().st_size,
                )
            )
        job = Job(
            study_pk=study.id,
            pipeline_name="demo-mr",
            pipeline_version="1.0",
            destinations=[destination],
            state="succeeded",
            review_state="pending",
            attempts=1,
            duration_s=1.25,
            log="pipeline demo-mr v1.0: 1.25 s",
            summary={
                "top_class": "lesion",
                "confidence": 0.87,
                "severity": "Moderate",
                "devices": {"demo-seg": "cpu"},
                "fallbacks": [],
                "processing_seconds": 1.25,
                "finding_count": 1,
            },
        )
        session.add(job)
        session.flush()
        results = settings.job_results_dir(job.id)  # where the worker writes this job's outputs
        seg_path = results / "seg.dcm"
        seg = _write_seg(datasets, seg_path)
        save_result(_pipeline_result(datasets, _lesion_mask(datasets)), results)
        artifact = Artifact(
            job_pk=job.id,
            kind="seg",
            sop_class_uid=str(seg.SOPClassUID),
            sop_instance_uid=str(seg.SOPInstanceUID),
            series_instance_uid=str(seg.SeriesInstanceUID),
            path=str(seg_path.relative_to(settings.data_dir)),
            size_bytes=seg_path.stat().st_size,
            validated=True,
        )
        session.add(artifact)
        session.flush()
        delivery = Delivery(artifact_pk=artifact.id, destination_name=destination, state="held")
        session.add(delivery)
        session.flush()
        job_id, artifact_id, delivery_id = job.id, artifact.id, delivery.id
    return ProcessedStudy(
        study_uid, series_uid, job_id, seg_path, len(datasets), artifact_id, delivery_id
    )
