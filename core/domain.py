"""Enums and frozen value objects shared by every stage of the node.

They live here, not in the ORM, so that pure code (completion rules, routing, pipelines, result
writers) can use them without importing the database layer. Enum values are the strings stored in
the database, so renaming a member is a migration.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class StoreStatus(enum.IntEnum):
    """DIMSE C-STORE response statuses the receiver returns (PS3.4 B.2.3, PS3.7 C)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # refused: free disk below the watermark
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000  # undecodable dataset, missing UIDs
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_INVOCATION = 0x0111


class StudyState(enum.StrEnum):
    RECEIVING = "receiving"  # instances still arriving (quiet period running)
    COMPLETE = "complete"  # completion rule met; jobs created
    PROCESSED = "processed"  # every job reached a terminal state (Study.outcome says how)
    SKIPPED = "skipped"  # complete, but no pipeline matches it (Study.outcome says why)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # terminal, after the last retry

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED)


class ModelLoadState(enum.StrEnum):
    """A model as the node's workers have it (``/api/health``, ``pacsnode models list``)."""

    NOT_LOADED = "not loaded yet"  # its card and weights check out; loaded on first use
    LOADED = "loaded"
    FAILED = "failed"  # refused card, missing weights, SHA-256 mismatch, or the load raised


class ArtifactKind(enum.StrEnum):
    """DICOM objects a job produces; the order is the dispatch order (SEG before the SR citing it)."""

    SEG = "seg"
    OVERLAY = "overlay"
    PDF = "pdf"
    SR = "sr"
    # IHE IOCM Rejection Note (KOS) withdrawing objects already delivered; made by Reject, last
    REJECTION_NOTE = "rejection_note"
    # Parametric Map of the classification's explanation (Grad-CAM); ranked after the others so
    # the older kinds keep their series numbers (9901 + rank)
    PMAP = "pmap"
    # the enhancement task's denoised images: a derived series, one instance per source instance
    ENHANCED = "enhanced"

    @property
    def dispatch_rank(self) -> int:
        return {
            "seg": 0,
            "overlay": 1,
            "pdf": 2,
            "sr": 3,
            "rejection_note": 4,
            "pmap": 5,
            "enhanced": 6,
        }[self.value]

    @property
    def is_result(self) -> bool:
        """A result of the pipeline (not a note about results)."""
        return self is not ArtifactKind.REJECTION_NOTE


class ReviewState(enum.StrEnum):
    NOT_REQUIRED = "not_required"
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class DeliveryState(enum.StrEnum):
    HELD = "held"  # waiting for review approval
    PENDING = "pending"  # due for (another) attempt at next_attempt_at
    IN_PROGRESS = "in_progress"
    DELIVERED = "delivered"
    FAILED = "failed"  # attempts exhausted; the console can resend
    CANCELLED = "cancelled"  # review rejected: never sent

    @property
    def unsent(self) -> bool:
        """Not (yet) at the destination: what a rejection cancels."""
        return self in (
            DeliveryState.HELD,
            DeliveryState.PENDING,
            DeliveryState.IN_PROGRESS,
            DeliveryState.FAILED,
        )


class DestinationKind(enum.StrEnum):
    DICOM = "dicom"
    ORTHANC = "orthanc"
    DICOMWEB = "dicomweb"
    FOLDER = "folder"


class LateArrivalPolicy(enum.StrEnum):
    """What to do with instances that arrive after a study was processed."""

    IGNORE = "ignore"
    REPROCESS = "reprocess"


class Role(enum.StrEnum):
    ADMIN = "admin"
    RADIOLOGIST = "radiologist"
    VIEWER = "viewer"


class Severity(enum.StrEnum):
    LOW = "Low"
    MODERATE = "Moderate"
    HIGH = "High"

    @property
    def meaning(self) -> str:
        """The word every report uses: the SNOMED CT severity the SR codes (Mild/Moderate/Severe).

        The stored value stays Low/Moderate/High (job summaries and charts key on it); what a
        reader sees, in the PDF, the SR and the console, is this one vocabulary.
        """
        return {"Low": "Mild", "Moderate": "Moderate", "High": "Severe"}[self.value]


@dataclass(frozen=True)
class CodedConcept:
    """A (value, scheme, meaning) triple, e.g. SNOMED CT codes from a model card."""

    value: str
    scheme_designator: str
    meaning: str


@dataclass(frozen=True)
class InstanceHeader:
    """The attributes indexed from a received instance's header (no pixel data is decoded)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    referring_physician_name: str = ""
    study_id: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part_examined: str = ""
    instance_number: int | None = None
    number_of_frames: int = 1
    image_type: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Association:
    """Who sent an instance: recorded per instance and used by routing rules."""

    calling_ae: str = ""
    called_ae: str = ""
    peer_host: str = ""
    source: str = "dicom"  # dicom | orthanc | import | upload


@dataclass(frozen=True)
class SeriesFacts:
    """What routing, completion rules and pipeline series selection may look at (no pixels)."""

    series_instance_uid: str
    modality: str = ""
    sop_class_uid: str = ""
    series_description: str = ""
    body_part_examined: str = ""
    instance_count: int = 0
    image_type: tuple[str, ...] = ()
    orientation: str | None = None  # AXIAL | SAGITTAL | CORONAL | OBLIQUE, when known
    number_of_frames: int = 1


@dataclass(frozen=True)
class StudyFacts:
    """What completion and routing decide on: one study's state and its series, read in one query."""

    study_instance_uid: str
    state: StudyState
    last_received_at: datetime
    series: tuple[SeriesFacts, ...]
    study_description: str = ""
    calling_ae: str = ""
    called_ae: str = ""
    peer_host: str = ""
    complete_requested: bool = False
