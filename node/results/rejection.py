"""IHE IOCM Rejection Note: a Key Object Selection Document withdrawing results already sent.

When a reviewer rejects results that already reached a PACS, cancelling the remaining deliveries is
not enough: the PACS must be told to hide what it has. IHE IOCM (Rad TF-2 RAD-66) does that with a
KOS titled "Rejected for Patient Safety Reasons" (113037, DCM) that references every rejected
instance, both in its content tree and in the Current Requested Procedure Evidence Sequence.
The SOP Instance UID is a hash of the rejected UIDs, so re-planning the same note never makes a
second object.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset

from core.domain import ArtifactKind
from node.results.equipment import MANUFACTURER
from node.results.uids import deterministic_uid, series_number
from node.results.validate import ResultValidationError, encode

REJECTED_FOR_PATIENT_SAFETY = hd.sr.CodedConcept(
    value="113037", scheme_designator="DCM", meaning="Rejected for Patient Safety Reasons"
)
SERIES_DESCRIPTION = "pacsnode rejection note (AI results withdrawn)"
KIND = ArtifactKind.REJECTION_NOTE


def rejection_note_uid(rejected_uids: Collection[str]) -> str:
    """The note's SOP Instance UID: the same rejected set always gives the same note."""
    return deterministic_uid("pacsnode-rejection-note", *sorted(rejected_uids))


def build_rejection_note(rejected: Sequence[Dataset], reason: str) -> Dataset:
    """A KOS (IOCM Rejection Note) referencing every dataset in ``rejected`` (headers suffice).

    Raises ``ValueError`` when there is nothing to reject or the objects span several studies
    (IOCM: one note per study)."""
    if not rejected:
        raise ValueError("a rejection note needs at least one rejected object")
    studies = {str(ds.StudyInstanceUID) for ds in rejected}
    if len(studies) != 1:
        raise ValueError(f"rejected objects span {len(studies)} studies; one note per study")
    uids = [str(ds.SOPInstanceUID) for ds in rejected]
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTED_FOR_PATIENT_SAFETY,
        referenced_objects=list(rejected),
        description=(reason.strip() or "rejected by a reviewer")[:1024],
    )
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=list(rejected),
        content=content,
        series_instance_uid=deterministic_uid("pacsnode-rejection-series", studies.pop()),
        series_number=series_number(KIND),
        sop_instance_uid=rejection_note_uid(uids),
        instance_number=1,
        manufacturer=MANUFACTURER,
    )
    note.SeriesDescription = SERIES_DESCRIPTION
    return note


def referenced_uids(note: Dataset) -> set[str]:
    """SOP Instance UIDs the note's content tree references."""
    return {
        str(ref.ReferencedSOPInstanceUID)
        for item in note.get("ContentSequence", [])
        for ref in item.get("ReferencedSOPSequence", [])
    }


def evidence_uids(note: Dataset) -> set[str]:
    """SOP Instance UIDs listed in the Current Requested Procedure Evidence Sequence."""
    return {
        str(ref.ReferencedSOPInstanceUID)
        for study in note.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for ref in series.get("ReferencedSOPSequence", [])
    }


def encode_rejection_note(note: Dataset, rejected_uids: Collection[str]) -> bytes:
    """The note's bytes, after reading them back and checking title and references."""
    data = encode(note)
    reread = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    title = reread.ConceptNameCodeSequence[0]
    if (title.CodeValue, title.CodingSchemeDesignator) != ("113037", "DCM"):
        raise ResultValidationError(KIND, f"document title is {title.CodeValue}, not 113037")
    wanted = set(rejected_uids)
    for name, found in (("content", referenced_uids(reread)), ("evidence", evidence_uids(reread))):
        if found != wanted:
            raise ResultValidationError(
                KIND, f"{name} references {len(found)} object(s), expected {len(wanted)}"
            )
    return data
