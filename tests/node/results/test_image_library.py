"""The SR's image library, encoded apart from the report, is byte for byte highdicom's; the SR
gate refuses a report that lost a finding, cites a foreign image or lacks its SEG in evidence."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DigitalXRayImageStorageForPresentation

from core.domain import ArtifactKind
from node.results.image_library import encode_library
from node.results.produce import OutputOptions, produce_results
from node.results.source import clean_sources
from node.results.validate import ResultValidationError, validate_sr
from tests.node.results.conftest import SOURCE_KINDS, load_sources
from tests.node.results.factories import make_result, synthetic_ct_series


def _highdicom_library(sources: list[Dataset]) -> bytes | None:
    """highdicom's ImageLibrary of the sources it can describe, encoded by pydicom as an item."""
    usable = []
    for source in sources:
        try:
            hd.sr.ImageLibraryEntryDescriptors(source)
        except (AttributeError, ValueError, TypeError):
            continue
        usable.append(source)
    if not usable:
        return None
    holder = Dataset()
    holder.ContentSequence = [hd.sr.ImageLibrary(usable)[0]]
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, holder)
    return buffer.getvalue()[12:]  # the item, without the Content Sequence's own header


def _dx_with_spacing() -> list[Dataset]:
    """A projection image highdicom describes (it reads ImagerPixelSpacing and orientation)."""
    (source,) = synthetic_ct_series(1, 16)
    source.SOPClassUID = DigitalXRayImageStorageForPresentation
    source.Modality = "DX"
    source.ImagerPixelSpacing = [0.2, 0.2]
    source.PatientOrientation = ["L", "F"]
    return [source]


@pytest.mark.parametrize("kind", [*SOURCE_KINDS, "dx", "ct-spacing-between-slices"])
def test_library_is_highdicoms_byte_for_byte(kind: str) -> None:
    if kind == "dx":
        sources = _dx_with_spacing()
    elif kind == "ct-spacing-between-slices":
        sources = synthetic_ct_series(3, 16)
        for source in sources:
            source.SpacingBetweenSlices = "2.5"
    else:
        sources = load_sources(kind)
    cleaned = clean_sources(sources)
    assert encode_library(cleaned) == _highdicom_library(cleaned)


def test_image_references_of_odd_and_even_length_and_two_classes_are_highdicoms() -> None:
    """Image items after the first of a SOP class reuse its encoding with their own reference:
    UIDs of odd and even length (padded), and a second class in the same library."""
    sources = synthetic_ct_series(4, 16)
    for index, source in enumerate(sources):
        source.SOPInstanceUID = "1.2.826.0.1.3680043.10.543." + "7" * (index + 1)
    sources[3].SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # an MR image among the CTs
    sources[3].Modality = "MR"
    cleaned = clean_sources(sources)
    assert encode_library(cleaned) == _highdicom_library(cleaned)


def test_a_source_highdicom_cannot_describe_is_left_out() -> None:
    sources = synthetic_ct_series(3, 16)
    del sources[1].SliceThickness  # highdicom reads it as required on a CT
    library = encode_library(sources)
    assert library is not None and library == _highdicom_library(sources)
    assert str(sources[1].SOPInstanceUID).encode() not in library
    assert str(sources[0].SOPInstanceUID).encode() in library


def _sr(tmp_path: Path) -> tuple[bytes, object, list[Dataset], str]:
    sources = synthetic_ct_series(6, 32)
    result = make_result(sources)
    produced = produce_results(result, sources, OutputOptions(overlay=False, pdf=False), tmp_path)
    by_kind = {p.kind: p for p in produced}
    seg_uid = by_kind[ArtifactKind.SEG].sop_instance_uid
    return by_kind[ArtifactKind.SR].path.read_bytes(), result, sources, seg_uid


def test_the_written_report_carries_highdicoms_library(tmp_path: Path) -> None:
    data, result, sources, seg_uid = _sr(tmp_path)
    validate_sr(data, result, seg_uid)  # type: ignore[arg-type]
    library = _highdicom_library(clean_sources(sources))
    assert library is not None and data.count(library) == 1
    report = pydicom.dcmread(io.BytesIO(data))
    names = [item.ConceptNameCodeSequence[0].CodeValue for item in report.ContentSequence]
    assert names.index("111028") == names.index("126010") - 1  # library just before measurements


def test_gate_refuses_a_report_without_a_finding(tmp_path: Path) -> None:
    data, result, _sources, seg_uid = _sr(tmp_path)
    finding = result.findings[0]  # type: ignore[attr-defined]
    with pytest.raises(ResultValidationError, match=f"finding {finding.tracking_id} missing"):
        other = b"2.25.1".ljust(len(finding.tracking_uid), b"9")
        validate_sr(data.replace(finding.tracking_uid.encode(), other), result, seg_uid)  # type: ignore[arg-type]


def test_gate_refuses_foreign_images_and_a_missing_seg(tmp_path: Path) -> None:
    data, result, sources, seg_uid = _sr(tmp_path)
    with pytest.raises(ResultValidationError, match="SEG it cites"):
        validate_sr(data, result, "2.25.12345")  # type: ignore[arg-type]
    uid = str(sources[0].SOPInstanceUID).encode()
    foreign = b"2.25.7".ljust(len(uid), b"7")
    tampered = data.replace(uid, foreign)
    with pytest.raises(ResultValidationError, match="image library cites other images"):
        validate_sr(tampered, result, seg_uid)  # type: ignore[arg-type]
    with pytest.raises(ResultValidationError):  # cut short: unreadable, or its findings lost
        validate_sr(data[: len(data) // 2], result, seg_uid)  # type: ignore[arg-type]
