"""Hand-made DICOM objects standing in for a job's results (SEG, overlay, PDF, SR) in dispatch tests.

They are small but real: a highdicom SEG over a tiny CT slice, a Secondary Capture, an Encapsulated
PDF and a Comprehensive SR that references the SEG, all in one study, so a real peer stores them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ComprehensiveSRStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from core.domain import ArtifactKind

MINIMAL_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


@dataclass(frozen=True)
class MadeObject:
    kind: ArtifactKind
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str


def _patient_study(ds: Dataset, study_uid: str) -> None:
    ds.PatientName = "Dispatch^Test"
    ds.PatientID = "DISPATCH-1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20261123"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC1"
    ds.ReferringPhysicianName = ""


def _save(ds: Dataset, path: Path, sop_class: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def ct_slice(path: Path, study_uid: str, size: int = 16) -> Dataset:
    ds = Dataset()
    _patient_study(ds, study_uid)
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "test"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    ds.PixelData = (np.arange(size * size, dtype=np.int16).reshape(size, size)).tobytes()
    _save(ds, path, CTImageStorage)
    return ds


def make_results(folder: Path, study_uid: str | None = None) -> dict[ArtifactKind, MadeObject]:
    """SEG, overlay (SC), PDF and SR for one study; the SR cites the SEG."""
    study_uid = study_uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    source = ct_slice(folder / "source-ct.dcm", study_uid)
    mask = np.zeros((1, source.Rows, source.Columns), dtype=bool)
    mask[0, 4:10, 4:10] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=hd.sr.CodedConcept(
            "49755003", "SCT", "Morphologically Altered Structure"
        ),
        segmented_property_type=hd.sr.CodedConcept("52988006", "SCT", "Lesion"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="test",
            version="1",
            family=hd.sr.CodedConcept("123109", "DCM", "Manual Processing"),
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="pacsnode-test",
        manufacturer_model_name="dispatch",
        software_versions="0",
        device_serial_number="1",
    )
    seg_path = folder / "seg.dcm"
    seg.save_as(seg_path)
    made = {
        ArtifactKind.SEG: MadeObject(
            ArtifactKind.SEG, seg_path, seg.SOPClassUID, seg.SOPInstanceUID, seg.SeriesInstanceUID
        )
    }

    sc = Dataset()
    _patient_study(sc, study_uid)
    sc.SOPInstanceUID, sc.SeriesInstanceUID = generate_uid(), generate_uid()
    sc.Modality, sc.ConversionType, sc.SeriesNumber, sc.InstanceNumber = "OT", "WSD", 902, 1
    sc.SamplesPerPixel, sc.PhotometricInterpretation, sc.PlanarConfiguration = 3, "RGB", 0
    sc.Rows = sc.Columns = 16
    sc.BitsAllocated, sc.BitsStored, sc.HighBit, sc.PixelRepresentation = 8, 8, 7, 0
    sc.PixelData = np.full((16, 16, 3), 128, dtype=np.uint8).tobytes()
    _save(sc, folder / "overlay.dcm", SecondaryCaptureImageStorage)
    made[ArtifactKind.OVERLAY] = MadeObject(
        ArtifactKind.OVERLAY,
        folder / "overlay.dcm",
        SecondaryCaptureImageStorage,
        sc.SOPInstanceUID,
        sc.SeriesInstanceUID,
    )

    pdf = Dataset()
    _patient_study(pdf, study_uid)
    pdf.SOPInstanceUID, pdf.SeriesInstanceUID = generate_uid(), generate_uid()
    pdf.Modality, pdf.SeriesNumber, pdf.InstanceNumber, pdf.ConversionType = "DOC", 903, 1, "WSD"
    pdf.ContentDate, pdf.ContentTime, pdf.AcquisitionDateTime = (
        "20261123",
        "120000",
        "20261123120000",
    )
    pdf.BurnedInAnnotation, pdf.DocumentTitle, pdf.MIMETypeOfEncapsulatedDocument = (
        "YES",
        "report",
        "application/pdf",
    )
    pdf.ConceptNameCodeSequence = DicomSequence([])
    pdf.EncapsulatedDocument = MINIMAL_PDF + (b"\0" if len(MINIMAL_PDF) % 2 else b"")
    pdf.EncapsulatedDocumentLength = len(MINIMAL_PDF)
    _save(pdf, folder / "report.dcm", EncapsulatedPDFStorage)
    made[ArtifactKind.PDF] = MadeObject(
        ArtifactKind.PDF,
        folder / "report.dcm",
        EncapsulatedPDFStorage,
        pdf.SOPInstanceUID,
        pdf.SeriesInstanceUID,
    )

    sr = Dataset()
    _patient_study(sr, study_uid)
    sr.SOPInstanceUID, sr.SeriesInstanceUID = generate_uid(), generate_uid()
    sr.Modality, sr.SeriesNumber, sr.InstanceNumber = "SR", 904, 1
    sr.ContentDate, sr.ContentTime = "20261123", "120000"
    sr.ValueType, sr.CompletionFlag, sr.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    sr.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = (
        "126000",
        "DCM",
        "Imaging Measurement Report",
    )
    sr.ConceptNameCodeSequence = DicomSequence([concept])
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = seg.SOPClassUID, seg.SOPInstanceUID
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = seg.SeriesInstanceUID
    series_ref.ReferencedSOPSequence = DicomSequence([ref])
    evidence = Dataset()
    evidence.StudyInstanceUID = study_uid
    evidence.ReferencedSeriesSequence = DicomSequence([series_ref])
    sr.CurrentRequestedProcedureEvidenceSequence = DicomSequence([evidence])
    sr.ContentSequence = DicomSequence([])
    sr.ReferencedPerformedProcedureStepSequence = DicomSequence([])
    sr.PerformedProcedureCodeSequence = DicomSequence([])
    sr.InstanceCreationDate = datetime(2026, 11, 23).strftime("%Y%m%d")
    _save(sr, folder / "sr.dcm", ComprehensiveSRStorage)
    made[ArtifactKind.SR] = MadeObject(
        ArtifactKind.SR,
        folder / "sr.dcm",
        ComprehensiveSRStorage,
        sr.SOPInstanceUID,
        sr.SeriesInstanceUID,
    )
    return made
