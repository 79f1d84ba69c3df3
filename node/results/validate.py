"""The gate before dispatch: every object is re-read from its bytes and checked.

A builder returning is not enough: what leaves the node is the encoded file, so each object is
written to bytes, parsed back (pydicom, a plain BINARY SEG's pixels unpacked from its bits, other
SEGs and Parametric Maps by highdicom) and compared with what it was meant to say.
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from core.domain import ArtifactKind
from node.results.seg import BuiltSegmentation
from node.results.seg_bits import binary_label_maps, cited_instances
from node.results.seg_read import label_maps, referenced_instances
from pipelines.contract import PipelineResult

REQUIRED_COMMON = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "ContentDate",
    "ContentTime",
    "ContributingEquipmentSequence",
)


class ResultValidationError(ValueError):
    """An object failed the gate; names the object kind and the reason."""

    def __init__(self, kind: ArtifactKind, reason: str) -> None:
        super().__init__(f"{kind.value}: {reason}")
        self.kind = kind
        self.reason = reason


def encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _common(kind: ArtifactKind, reread: Dataset, result: PipelineResult) -> None:
    for keyword in REQUIRED_COMMON:
        if keyword not in reread:
            raise ResultValidationError(kind, f"missing {keyword}")
    if reread.StudyInstanceUID != result.study_instance_uid:
        raise ResultValidationError(kind, "StudyInstanceUID differs from the source study")
    purposes = [
        item.PurposeOfReferenceCodeSequence[0].CodeValue
        for item in reread.ContributingEquipmentSequence
        if "PurposeOfReferenceCodeSequence" in item
    ]
    if "1630" not in purposes:
        raise ResultValidationError(kind, "no IHE AIR Processing Algorithm equipment item")


def validate_seg(
    data: bytes, result: PipelineResult, built: BuiltSegmentation, seg_type: str
) -> None:
    """Re-read the SEG: its type, its segments, and (BINARY) every pixel of every segment where
    it was meant to be: the re-read segment-number map equals the one it was built from.

    The pixels of a plain BINARY SEG are read from its bits (``node.results.seg_bits``); any
    other SEG, and one those bits do not describe plainly, is read by highdicom's ``segread``."""
    kind = ArtifactKind.SEG
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        _common(kind, dataset, result)
        if dataset.get("SegmentationType") != seg_type:
            raise ResultValidationError(
                kind, f"type {dataset.get('SegmentationType')}, wanted {seg_type}"
            )
        wanted = set(built.finding_segments.values() or built.segment_numbers.values())
        described = {int(d.SegmentNumber) for d in dataset.get("SegmentSequence", [])}
        if described != wanted:
            raise ResultValidationError(kind, f"segments {described} != {wanted}")
        if seg_type != "BINARY":
            _segread(data)  # FRACTIONAL: readable by highdicom; the pixels are not compared
            return
        keys = [(f.sop_instance_uid, f.frame_number or None) for f in result.source_frames]
        _no_unknown_sources(cited_instances(dataset), result)
        got = binary_label_maps(dataset, keys)
    except ResultValidationError:
        raise
    except (ValueError, AttributeError, TypeError, KeyError, IndexError, OSError) as exc:
        raise ResultValidationError(kind, f"unreadable: {exc}") from exc
    if got is None:
        got = _segment_map(_segread(data), result, built.expected.shape)
    if got.shape != built.expected.shape:
        raise ResultValidationError(kind, f"re-read shape {got.shape} != {built.expected.shape}")
    if not np.array_equal(got, built.expected):  # one pass; name a segment only on failure
        differ = np.unique(
            np.concatenate([got[got != built.expected], built.expected[got != built.expected]])
        )
        number = int(differ[differ > 0][0]) if (differ > 0).any() else 0
        raise ResultValidationError(kind, f"segment {number} mask differs after re-read")


def _segread(data: bytes) -> hd.seg.Segmentation:
    try:
        return hd.seg.segread(io.BytesIO(data))
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        raise ResultValidationError(ArtifactKind.SEG, f"unreadable: {exc}") from exc


def _no_unknown_sources(cited: set[str], result: PipelineResult) -> None:
    unknown = cited - {f.sop_instance_uid for f in result.source_frames}
    if unknown:
        raise ResultValidationError(ArtifactKind.SEG, f"cites unknown sources {sorted(unknown)}")


def _segment_map(
    seg: hd.seg.Segmentation, result: PipelineResult, shape: tuple[int, ...]
) -> np.ndarray:
    """(source frames, rows, cols): the segment number of each pixel, re-read by highdicom
    (BINARY segments built from one map never overlap)."""
    _no_unknown_sources(referenced_instances(seg), result)
    keys = [(f.sop_instance_uid, f.frame_number or None) for f in result.source_frames]
    try:
        maps = label_maps(seg, keys)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ResultValidationError(ArtifactKind.SEG, f"frames cannot be re-read: {exc}") from exc
    if maps.shape != tuple(shape):
        raise ResultValidationError(ArtifactKind.SEG, f"re-read shape {maps.shape} != {shape}")
    return maps


_REPORT = ("126000", "DCM")  # Imaging Measurement Report (TID 1500's root)
_IMAGING_MEASUREMENTS = ("126010", "DCM")
_IMAGE_LIBRARY = ("111028", "DCM")
_TRACKING_UID = ("112040", "DCM")


def _concept(item: Dataset) -> tuple[str, str]:
    name = item.ConceptNameCodeSequence[0]
    return str(name.CodeValue), str(name.CodingSchemeDesignator)


def _children(item: Dataset, concept: tuple[str, str]) -> list[Dataset]:
    return [child for child in item.get("ContentSequence", []) if _concept(child) == concept]


def validate_sr(data: bytes, result: PipelineResult, seg_uid: str | None) -> None:
    """Re-read the SR from its bytes: a TID 1500 report with a measurement group (tracking UID)
    for every finding, an image library of the result's own source images, the SEG it cites in
    its evidence.

    pydicom parses an element only where it is read, so the ~1,300 descriptor items of a 100-image
    library are never decoded; highdicom's ``srread`` built an object for each (seconds for a CT).
    highdicom's template checks ran when the report was built (``build_sr``); the conformance
    tests check the result with pixelmed's validator and dciodvfy.
    """
    kind = ArtifactKind.SR
    try:
        sr = pydicom.dcmread(io.BytesIO(data))
        _common(kind, sr, result)
        if sr.get("ValueType") != "CONTAINER" or _concept(sr) != _REPORT:
            raise ResultValidationError(kind, "not a TID 1500 Imaging Measurement Report")
        tracked = {
            str(item.UID)
            for container in _children(sr, _IMAGING_MEASUREMENTS)
            for group in container.ContentSequence
            for item in group.get("ContentSequence", [])
            if item.ValueType == "UIDREF" and _concept(item) == _TRACKING_UID
        }
        cited = {
            str(reference.ReferencedSOPInstanceUID)
            for library in _children(sr, _IMAGE_LIBRARY)
            for group in library.get("ContentSequence", [])
            for item in group.get("ContentSequence", [])
            if item.ValueType == "IMAGE"
            for reference in item.ReferencedSOPSequence
        }
    except (ValueError, AttributeError, TypeError, KeyError, IndexError, OSError) as exc:
        if isinstance(exc, ResultValidationError):
            raise
        raise ResultValidationError(kind, f"unreadable: {exc}") from exc
    for finding in result.findings:
        if finding.tracking_uid not in tracked:
            raise ResultValidationError(kind, f"finding {finding.tracking_id} missing")
    foreign = cited - {f.sop_instance_uid for f in result.source_frames}
    if foreign:
        raise ResultValidationError(kind, f"image library cites other images {sorted(foreign)}")
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    if seg_uid is not None and seg_uid not in evidence:
        raise ResultValidationError(kind, "the SEG it cites is not in its evidence")


def validate_pdf(data: bytes, result: PipelineResult) -> None:
    kind = ArtifactKind.PDF
    reread = pydicom.dcmread(io.BytesIO(data))
    _common(kind, reread, result)
    document = bytes(reread.EncapsulatedDocument)
    if not document.startswith(b"%PDF-") or b"%%EOF" not in document[-64:]:
        raise ResultValidationError(kind, "encapsulated document is not a complete PDF")


def validate_overlay(data: bytes, result: PipelineResult) -> None:
    kind = ArtifactKind.OVERLAY
    reread = pydicom.dcmread(io.BytesIO(data))
    _common(kind, reread, result)
    if reread.get("BurnedInAnnotation") != "YES":
        raise ResultValidationError(kind, "BurnedInAnnotation must be YES")
    pixels = reread.pixel_array
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ResultValidationError(kind, f"expected RGB pixels, got {pixels.shape}")


def read_parametric_map(
    data: bytes, source_keys: list[tuple[str, int | None]]
) -> tuple[hd.pm.ParametricMap, np.ndarray]:
    """Re-read a Parametric Map with highdicom: the object and its float values per source
    frame, ``(len(source_keys), rows, cols)``, placed by each frame's cited source image (highdicom
    may store frames in another order than the sources came)."""
    pmap = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(io.BytesIO(data)))
    pixels = np.asarray(pmap.pixel_array, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[None]
    out = np.full((len(source_keys), int(pmap.Rows), int(pmap.Columns)), np.nan, np.float32)
    position = {key: index for index, key in enumerate(source_keys)}
    for number, frame in enumerate(pmap.PerFrameFunctionalGroupsSequence):
        cited = frame.DerivationImageSequence[0].SourceImageSequence[0]
        frame_number = cited.get("ReferencedFrameNumber")
        key = (
            str(cited.ReferencedSOPInstanceUID),
            int(frame_number) if frame_number is not None else None,
        )
        if key not in position and key[1] == 1:  # a single-frame source cited as frame 1
            key = (key[0], None)
        out[position[key]] = pixels[number]
    return pmap, out


def validate_pmap(data: bytes, result: PipelineResult) -> None:
    """Re-read the Parametric Map: IHE AIR identification, and every value where it was meant
    to be (float32, so exactly) on the source frame it cites."""
    kind = ArtifactKind.PMAP
    if result.explanation is None:
        raise ResultValidationError(kind, "the result has no explanation")
    keys = [(f.sop_instance_uid, f.frame_number) for f in result.source_frames]
    try:
        pmap, values = read_parametric_map(data, keys)
    except (ValueError, AttributeError, TypeError, KeyError, IndexError, RuntimeError) as exc:
        raise ResultValidationError(kind, f"unreadable: {exc}") from exc
    _common(kind, pmap, result)
    expected = np.clip(result.explanation.maps, 0.0, 1.0).astype(np.float32)
    if values.shape != expected.shape or not np.array_equal(values, expected):
        raise ResultValidationError(kind, "re-read values differ from the explanation map")
