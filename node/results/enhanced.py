"""The enhancement task's denoised images as a derived series in the source study.

One instance per source instance, same SOP class, same geometry (rows, columns, pixel spacing,
position, orientation) and the same Modality LUT (Rescale Slope/Intercept, Rescale Type), so the
denoised values are read back in the source's units: HU stay HU. The new values are stored with
the source's pixel representation and bit depth (rounded, clipped to its range).

Identification: Image Type ``DERIVED\\SECONDARY`` (values 3 and on kept: the CT IOD requires value
3), a Derivation Description naming the members, Derivation Code (113087, DCM, "Smoothing") from
CID 7203 "Image Derivation" — DICOM has no narrower "noise reduction" concept there — and a Source
Image Sequence citing each source instance with purpose (121322, DCM, "Source image for image
processing operation") from CID 7202.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from core.dicom_uids import deterministic_uid
from core.domain import ArtifactKind
from node.results.uids import result_uid, series_number
from node.results.validate import ResultValidationError, _common
from pipelines.contract import PipelineResult

DERIVATION_CODE = ("113087", "DCM", "Smoothing")  # CID 7203 Image Derivation
SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")  # CID 7202
# the source's values no longer hold for the new pixels
_STALE = (
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "PixelDataProviderURL",
    "IconImageSequence",
    "DerivationCodeSequence",
    "SourceImageSequence",
)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _stored(values: np.ndarray, source: Dataset) -> np.ndarray:
    """Physical values -> the source's stored pixel values (inverse Modality LUT, its range)."""
    slope = float(source.get("RescaleSlope", 1) or 1)
    intercept = float(source.get("RescaleIntercept", 0) or 0)
    bits = int(source.BitsStored)
    signed = int(source.PixelRepresentation) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    stored = np.clip(np.rint((values - intercept) / slope), low, high)
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16}.get(
        (int(source.BitsAllocated), signed), np.int16
    )
    return stored.astype(dtype)


_DS_KEYWORDS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceLocation")


def _conform(ds: Dataset) -> None:
    """What the image IODs require that lax sources (and float arithmetic) leave out.

    Decimal strings are re-formatted to at most 16 characters, and type 2 / 2C attributes the
    source lacks are added empty (their value is unknown, not invented).
    """
    for keyword in _DS_KEYWORDS:
        if keyword in ds and ds[keyword].value is not None:
            values = ds[keyword].value
            many = isinstance(values, (list, tuple, pydicom.multival.MultiValue))
            items = list(values) if many else [values]
            formatted = [format_number_as_ds(float(v)) for v in items]
            ds[keyword].value = formatted if many else formatted[0]
    modality = str(ds.get("Modality", ""))
    if "ImageOrientationPatient" not in ds and "PatientOrientation" not in ds:
        ds.PatientOrientation = ""
    if modality in ("CT", "MR") and "PatientPosition" not in ds:
        ds.PatientPosition = ""
    if modality == "CT" and "AcquisitionNumber" not in ds:
        ds.AcquisitionNumber = ""


def build_enhanced(
    result: PipelineResult, sources: Sequence[Dataset], result_version: int = 1
) -> list[Dataset]:
    """One derived instance per source instance, or [] when the result has no enhancement."""
    enhancement = result.enhancement
    if enhancement is None or enhancement.image is None:  # none, or read back without pixels
        return []
    if len(sources) != enhancement.image.shape[0]:
        raise ValueError(
            f"enhancement: {enhancement.image.shape[0]} frames for {len(sources)} source "
            "instances (multi-frame sources are not supported)"
        )
    if any("ModalityLUTSequence" in s for s in sources):
        raise ValueError("enhancement: sources with a Modality LUT Sequence are not supported")
    series_uid = result_uid(result, ArtifactKind.ENHANCED, "series", result_version)
    description = (
        f"denoised by {' + '.join(enhancement.members)}; estimated noise sigma "
        f"{enhancement.sigma_before:.4g} -> {enhancement.sigma_after:.4g}"
    )[:1024]
    out: list[Dataset] = []
    for index, (source, frame) in enumerate(zip(sources, enhancement.image, strict=True)):
        ds = copy.deepcopy(source)
        for keyword in _STALE:
            if keyword in ds:
                del ds[keyword]
        stale = [e.tag for e in ds if e.tag.is_private or 0x6000 <= e.tag.group <= 0x60FF]
        for tag in stale:
            del ds[tag]  # vendor data and overlays describe the source pixels
        ds.PixelData = _stored(frame, source).tobytes()
        ds["PixelData"].VR = "OW" if int(source.BitsAllocated) > 8 else "OB"
        image_type = [str(v) for v in source.get("ImageType", [])]
        ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
        ds.DerivationDescription = description
        ds.DerivationCodeSequence = DicomSequence([_code(*DERIVATION_CODE)])
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        reference.PurposeOfReferenceCodeSequence = DicomSequence([_code(*SOURCE_PURPOSE)])
        ds.SourceImageSequence = DicomSequence([reference])
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number(ArtifactKind.ENHANCED)
        ds.SOPInstanceUID = deterministic_uid(series_uid, str(source.SOPInstanceUID), str(index))
        ds.InstanceNumber = int(source.get("InstanceNumber", index + 1) or index + 1)
        _conform(ds)
        meta = pydicom.dataset.FileMetaDataset()
        meta.MediaStorageSOPClassUID = source.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        out.append(ds)
    return out


def validate_enhanced(
    data: bytes, result: PipelineResult, source: Dataset, expected: np.ndarray
) -> None:
    """Read back: same geometry and Modality LUT as the source, and the values written."""
    kind = ArtifactKind.ENHANCED
    ds = pydicom.dcmread(io.BytesIO(data))
    _common(kind, ds, result)
    for keyword in ("Rows", "Columns", "PixelSpacing", "RescaleSlope", "RescaleIntercept"):
        if keyword in source and not np.allclose(
            np.atleast_1d(ds.get(keyword, np.nan)).astype(float),
            np.atleast_1d(source.get(keyword)).astype(float),
            rtol=1e-9,
        ):
            raise ResultValidationError(kind, f"{keyword} differs from the source's")
    if list(ds.ImageType)[:2] != ["DERIVED", "SECONDARY"]:
        raise ResultValidationError(kind, "ImageType is not DERIVED\\SECONDARY")
    values = pydicom.pixels.apply_rescale(ds.pixel_array, ds).astype(np.float64)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    inside = (expected > values.min()) & (expected < values.max())  # clipped values aside
    if inside.any() and np.abs(values - expected)[inside].max() > abs(slope) / 2 + 1e-6:
        raise ResultValidationError(kind, "stored values do not read back as the denoised image")
