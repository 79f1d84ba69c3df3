"""Deterministic UIDs and series numbers for result objects.

A retry must resend the *same* objects (same SOP Instance UIDs) so PACS de-duplicates them, while a
re-run with a new result version or a new model version is a new result. So every UID is
:func:`core.dicom_uids.deterministic_uid` (the node's one scheme) of exactly those inputs and
nothing time- or host-dependent.
"""

from __future__ import annotations

from core.dicom_uids import deterministic_uid
from core.domain import ArtifactKind
from pipelines.contract import PipelineResult

# Series numbers of result series: high enough not to collide with modality series in practice.
_SERIES_NUMBER_BASE = 9900


def _model_signature(result: PipelineResult) -> list[str]:
    """Model names, versions and weights hashes: a changed model makes a new result."""
    return sorted(
        f"{run.model_name}:{run.model_version}:{run.weights_sha256}" for run in result.model_runs
    )


def result_uid(
    result: PipelineResult, kind: ArtifactKind | str, role: str, result_version: int
) -> str:
    """The UID for ``role`` ("series" or "instance") of one result object kind."""
    kind_value = ArtifactKind(kind).value
    sources = [
        "pacsnode-result",
        result.study_instance_uid,
        result.series_instance_uid,
        result.pipeline_name,
        result.pipeline_version,
        *_model_signature(result),
        kind_value,
        role,
        str(result_version),
    ]
    return deterministic_uid(*sources)


def series_number(kind: ArtifactKind | str) -> int:
    """A stable series number per object kind (SEG 9901, overlay 9902, PDF 9903, SR 9904,
    rejection note 9905, explanation Parametric Map 9906)."""
    return _SERIES_NUMBER_BASE + ArtifactKind(kind).dispatch_rank + 1
