"""The shared labelled MR volumes (pyradiomics' brain, breast and prostate phantom; NRRD) as DICOM
MR series with the NRRD's own geometry, and results whose findings are their real labels.

The image becomes one MR Image Storage file per slice (positions, orientation, spacing from the
NRRD header, LPS); the label (every non-zero value) becomes the segmentation, and the findings are
its connected components measured by the pipelines' own finding builder
(:func:`pipelines.findings.segment_findings_and_map`), so the SEG, SR, PDF and overlay describe
real anatomy with lesions of real shapes and sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from core.dicom_uids import deterministic_uid
from pipelines.contract import PipelineResult
from tests.conftest import SHARED_DATA
from tests.node.results.factories import LESION
from tests.node.results.labelled import lesion_result

LABELLED_DIR = SHARED_DATA / "labelled-volumes"
VOLUMES = {  # name -> (image file, label file)
    "brain1": ("brain1_image.nrrd", "brain1_label.nrrd"),
    "brain2": ("brain2_image.nrrd", "brain2_label.nrrd"),
    "breast1": ("breast1_image.nrrd", "breast1_label.nrrd"),
    "prostate": ("prostate_phantom_subvolume.nrrd", "prostate_phantom_subvolume-label.nrrd"),
}


def _uid(*parts: str) -> str:
    return deterministic_uid("pacsnode-test-labelled", *parts)


def write_volume(name: str, folder: Path) -> tuple[list[Path], np.ndarray]:
    """The volume as DICOM files (slice order) and its label as (slices, rows, cols) booleans."""
    import nrrd

    image_file, label_file = VOLUMES[name]
    image, header = nrrd.read(str(LABELLED_DIR / image_file), index_order="C")  # (z, y, x)
    label, _ = nrrd.read(str(LABELLED_DIR / label_file), index_order="C")
    directions = np.asarray(header["space directions"], dtype=np.float64)  # rows: x, y, z axes
    origin = np.asarray(header["space origin"], dtype=np.float64)
    spacing = np.linalg.norm(directions, axis=1)
    row_dir, col_dir = directions[0] / spacing[0], directions[1] / spacing[1]
    pixels = image.astype(np.int32)
    low = int(pixels.min())
    stored = (pixels - low).astype(np.uint16)  # unsigned, with the offset as rescale intercept
    study, series = _uid(name, "study"), _uid(name, "series")
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for k in range(stored.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = _uid(name, "instance", str(k))
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID = f"Labelled^{name}", f"LBL-{name}"
        ds.PatientBirthDate, ds.PatientSex = "", ""
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20170101", "120000", name[:16]
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.StudyDescription, ds.SeriesDescription = f"{name} (pyradiomics)", "labelled volume"
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "MR", "", 1, k + 1
        ds.FrameOfReferenceUID = _uid(name, "for")
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + k * directions[2]]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row, column spacing
        ds.SliceThickness = f"{spacing[2]:.4f}"
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType, ds.EchoTime, ds.RepetitionTime = "2D", "", ""
        ds.EchoTrainLength, ds.ImageType = "", ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(low), "1", "US"
        ds.PixelData = stored[k].tobytes()
        path = folder / f"{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths, label > 0


def labelled_result(name: str, folder: Path) -> tuple[list[Dataset], PipelineResult]:
    """Sources (in the decoded, stacked order) and a result whose findings are the labels."""
    paths, label = write_volume(name, folder)
    return lesion_result(paths, label.astype(np.uint8) * LESION.value, "MR")
