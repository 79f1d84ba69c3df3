"""Attributes every result object shares, applied after the builder returns.

Builders (highdicom, pydicom) stamp "now" and random UIDs in a few places; a retry must produce
identical bytes, so those are overwritten here from the result's fixed creation time and the
deterministic UIDs. Series description and IHE AIR identification are set here too, once.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from core.dicom_uids import deterministic_uid
from core.domain import ArtifactKind
from node.results.equipment import add_algorithm_identification
from node.results.source import ContentTime
from pipelines.contract import PipelineResult

_KIND_LABEL = {
    ArtifactKind.SEG: "SEG",
    ArtifactKind.OVERLAY: "overlay",
    ArtifactKind.PDF: "report PDF",
    ArtifactKind.SR: "SR",
    ArtifactKind.PMAP: "explanation map",
    ArtifactKind.ENHANCED: "denoised",
}


def series_description(result: PipelineResult, kind: ArtifactKind) -> str:
    """ "<pipeline> v<version> <kind> (AI)": viewers list it beside the source series."""
    text = f"{result.pipeline_name} v{result.pipeline_version} {_KIND_LABEL[kind]} (AI)"
    return text[:64]


def finalise(
    dataset: Dataset,
    result: PipelineResult,
    kind: ArtifactKind,
    when: ContentTime,
    institution_name: str = "",
) -> None:
    """Fix dates/times, random UIDs, description, institution and algorithm identification."""
    for keyword in ("ContentDate", "SeriesDate", "InstanceCreationDate"):
        if keyword in dataset or keyword == "ContentDate":
            setattr(dataset, keyword, when.date)
    for keyword in ("ContentTime", "SeriesTime", "InstanceCreationTime"):
        if keyword in dataset or keyword == "ContentTime":
            setattr(dataset, keyword, when.time)
    if "DimensionOrganizationSequence" in dataset:
        uid = deterministic_uid(*[str(dataset.SOPInstanceUID), "dim-org"])
        for item in dataset.DimensionOrganizationSequence:
            item.DimensionOrganizationUID = uid
        for item in dataset.get("DimensionIndexSequence", []):
            item.DimensionOrganizationUID = uid
    for item in dataset.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:  # highdicom stamps "now" on its own item
            item.ContributionDateTime = when.datetime_str
    for keyword in ("DateOfSecondaryCapture", "TimeOfSecondaryCapture"):
        if keyword in dataset:
            setattr(dataset, keyword, when.date if keyword.startswith("Date") else when.time)
    dataset.TimezoneOffsetFromUTC = when.offset  # the dates and times above are the node's
    dataset.SeriesDescription = series_description(result, kind)
    if institution_name:
        dataset.InstitutionName = institution_name[:64]
    add_algorithm_identification(dataset, result, when.datetime_str)
