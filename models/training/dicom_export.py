"""Write phantoms as DICOM series (DX/CR radiographs, CT slices) for pipeline and network tests.

The files are what a modality would push: one study, one series, correct geometry (pixel spacing,
image position/orientation, rescale to HU for CT) and fresh UIDs unless the caller passes them,
so a test can send them over C-STORE and compare results with the phantom's truth.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from models.training.phantoms import Phantom2D, Phantom3D

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def _base_dataset(
    sop_class: str, study_uid: str, series_uid: str, modality: str, patient_id: str
) -> Dataset:
    now = dt.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "pacsnode phantom"
    ds.SeriesNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def write_series(
    phantom: Phantom2D | Phantom3D,
    out_dir: Path,
    modality: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "PHANTOM001",
    series_description: str = "phantom",
    study_description: str = "phantom study",
) -> list[Path]:
    """Write ``phantom`` under ``out_dir`` (one file per image) and return the paths in order.

    2D phantoms become one ``DX`` (default) or ``CR`` image scaled to 12 bits; 3D phantoms become
    ``CT`` slices stored as signed HU with rescale intercept 0, ordered head to foot.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    if isinstance(phantom, Phantom2D):
        modality = modality or "DX"
        if modality not in ("DX", "CR"):
            raise ValueError(f"a 2D phantom is written as DX or CR, not {modality!r}")
        sop = DX_IMAGE_STORAGE if modality == "DX" else CR_IMAGE_STORAGE
        ds = _base_dataset(sop, study_uid, series_uid, modality, patient_id)
        pixels = np.round(phantom.image * 4095).astype(np.uint16)
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelRepresentation = 0
        ds.BitsStored, ds.HighBit = 12, 11
        ds.InstanceNumber = 1
        ds.ImagerPixelSpacing = ds.PixelSpacing = [f"{s:g}" for s in phantom.pixel_spacing_mm]
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = "PA"
        ds.PatientOrientation = ["L", "F"]  # PA chest as displayed; the SR image library needs it
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.SeriesDescription, ds.StudyDescription = series_description, study_description
        ds.PixelData = pixels.tobytes()
        path = out_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return [path]
    modality = modality or "CT"
    if modality != "CT":
        raise ValueError(f"a 3D phantom is written as CT, not {modality!r}")
    dz, dy, dx = phantom.spacing_mm
    frame_uid = generate_uid()
    hu = np.clip(np.round(phantom.volume), -1024, 3071).astype(np.int16)
    paths: list[Path] = []
    for index, plane in enumerate(hu):
        ds = _base_dataset(CT_IMAGE_STORAGE, study_uid, series_uid, modality, patient_id)
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.Rows, ds.Columns = plane.shape
        ds.PixelRepresentation = 1
        ds.BitsStored, ds.HighBit = 16, 15
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(-index * dz)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SliceLocation = float(-index * dz)
        ds.PixelSpacing = [f"{dy:g}", f"{dx:g}"]
        ds.SliceThickness = f"{dz:g}"
        ds.KVP = 120
        ds.BodyPartExamined = "ABDOMEN"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.SeriesDescription, ds.StudyDescription = series_description, study_description
        ds.PixelData = plane.tobytes()
        path = out_dir / f"{index + 1:04d}_{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def read_volume(paths: Sequence[Path]) -> np.ndarray:
    """Read back a written CT series as HU (D, H, W): the round-trip check used by tests."""
    import pydicom

    slices = [pydicom.dcmread(p) for p in paths]
    slices.sort(key=lambda s: -float(s.ImagePositionPatient[2]))
    return np.stack(
        [s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in slices]
    )
