"""Manual uploads: sort DICOM / zip / PNG / JPEG files by content and wrap pictures as DICOM.

A PNG or JPEG has no patient context, so it becomes a Secondary Capture Image (PS3.3 A.8) carrying
the details the user typed in; all pictures of one upload share one new study and series. Types are
decided from the bytes (magic numbers), never from the file name alone.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from node.ingest.zipstream import ZipLimitExceeded, ZipLimits, check_archive
from web.upload_stream import StagedFile

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MAX_PICTURE_PIXELS = 8192 * 8192


class UploadError(ValueError):
    """The upload cannot be accepted; the message tells the user why (shown as a 4xx)."""


@dataclass(frozen=True)
class PatientDetails:
    patient_name: str = ""
    patient_id: str = ""
    accession_number: str = ""
    study_description: str = "Manual upload"

    def validated(self) -> PatientDetails:
        for label, value, limit in (
            ("patient name", self.patient_name, 64),
            ("patient ID", self.patient_id, 64),
            ("accession number", self.accession_number, 16),
            ("study description", self.study_description, 64),
        ):
            if len(value) > limit or "\\" in value or not value.isprintable():
                raise UploadError(
                    f"The {label} must be at most {limit} printable characters without backslash."
                )
        return self


def sniff(head: bytes) -> str:
    """'dicom', 'zip', 'png', 'jpeg' or 'unknown' from a file's first 132 bytes."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    return "unknown"


def picture_to_secondary_capture(
    data: bytes,
    details: PatientDetails,
    study_uid: str,
    series_uid: str,
    number: int,
    *,
    greyscale: bool = False,
    pixel_spacing_mm: float | None = None,
) -> FileDataset:
    """Wrap one PNG/JPEG as a Secondary Capture instance of the given study and series.

    ``greyscale`` turns a colour picture into MONOCHROME2 (ITU-R 601 luma, Pillow's "L"): the
    models read one channel. ``pixel_spacing_mm`` (a scanned film, an exported radiograph) is
    written as Pixel Spacing and Nominal Scanned Pixel Spacing so that areas come out in mm²."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PICTURE_PIXELS:
            raise UploadError(f"image {number}: {image.width}x{image.height} is too large")
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ImportError) as exc:
        # ImportError: ultralytics patches Image.open process-wide to import an optional HEIF
        # plugin on unidentified images; an undecodable upload is still the user's error
        raise UploadError(f"image {number}: cannot be decoded ({exc})") from exc
    grey = greyscale or image.mode in ("L", "I;16", "I", "1", "LA")
    pixels = np.asarray(image.convert("L" if grey else "RGB"), dtype=np.uint8)
    now = datetime.now(UTC)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SECONDARY_CAPTURE)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = details.patient_name
    ds.PatientID = details.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.AccessionNumber = details.accession_number
    ds.StudyDescription = details.study_description
    ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.Modality = "OT"
    ds.Laterality = ""  # Type 2C: unknown for a picture
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.PatientOrientation = ""
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1 if grey else 3
    ds.PhotometricInterpretation = "MONOCHROME2" if grey else "RGB"
    if not grey:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    if pixel_spacing_mm is not None:
        ds.PixelSpacing = ds.NominalScannedPixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    return ds


def prepare_staged(
    staged: list[StagedFile],
    limits: ZipLimits,
    details: PatientDetails,
    *,
    greyscale: bool = False,
    pixel_spacing_mm: float | None = None,
    study_per_picture: bool = False,
) -> list[Path]:
    """Sort staged files by content, wrap pictures as Secondary Capture, refuse over-limit zips.

    Returns the paths to import. Pictures share one new study and series, or with
    ``study_per_picture`` (a prediction batch) each gets its own. The console's upload and
    ``/api/predict`` both come through here, so a file is judged the same way by either door.
    """
    to_import: list[Path] = []
    study_uid, series_uid, number = generate_uid(), generate_uid(), 0
    for item in staged:
        with item.path.open("rb") as fh:
            kind = sniff(fh.read(132))
        if kind == "unknown":
            raise UploadError(f"{item.filename}: not a DICOM file, zip archive, PNG or JPEG image")
        if kind in ("png", "jpeg"):
            if not details.patient_id and not details.patient_name:
                raise UploadError("Pictures need a patient name or ID to be wrapped as DICOM.")
            if study_per_picture:
                study_uid, series_uid = generate_uid(), generate_uid()
            number += 1
            ds = picture_to_secondary_capture(
                item.path.read_bytes(),
                details,
                study_uid,
                series_uid,
                number,
                greyscale=greyscale,
                pixel_spacing_mm=pixel_spacing_mm,
            )
            dcm = item.path.with_suffix(".dcm")
            ds.save_as(dcm, enforce_file_format=True)
            item.path.unlink()
            to_import.append(dcm)
            continue
        if kind == "zip":
            try:
                check_archive(item.path, limits)
            except zipfile.BadZipFile as exc:
                raise UploadError(f"{item.filename}: not a valid zip archive") from exc
            except ZipLimitExceeded as exc:
                raise UploadError(f"{item.filename}: {exc}") from exc
        to_import.append(item.path)
    return to_import
