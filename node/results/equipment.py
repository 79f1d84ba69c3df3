"""IHE AI Results (AIR) algorithm identification on every object we write.

IHE AIR asks for a Contributing Equipment item whose purpose is (1630, 99IHE, "Processing
Algorithm") per algorithm, naming manufacturer, model, software version and the Device UID from the
model card. highdicom's own ContributingEquipment only accepts DCM purposes, so the items are built
here with pydicom and appended to whatever the builder already wrote.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from pipelines.contract import ModelRun, PipelineResult

MANUFACTURER = "pacsnode"
PROCESSING_ALGORITHM = ("1630", "99IHE", "Processing Algorithm")


def _purpose_item() -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = PROCESSING_ALGORITHM
    return item


def contributing_item(run: ModelRun, contribution_datetime: str) -> Dataset:
    """One Contributing Equipment item for one model that really ran."""
    item = Dataset()
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = run.model_name[:64]
    item.SoftwareVersions = run.model_version[:64] or "unknown"
    if run.device_uid:
        item.DeviceUID = run.device_uid
    item.PurposeOfReferenceCodeSequence = DicomSequence([_purpose_item()])
    item.ContributionDateTime = contribution_datetime
    description = f"{run.task} on {run.device_used}; weights sha256 {run.weights_sha256[:16]}"
    item.ContributionDescription = description[:64]
    return item


def pipeline_item(result: PipelineResult, contribution_datetime: str) -> Dataset:
    """The pipeline itself (the ensemble that fused the model outputs) as an algorithm."""
    item = Dataset()
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = result.pipeline_name[:64]
    item.SoftwareVersions = result.pipeline_version[:64] or "unknown"
    item.PurposeOfReferenceCodeSequence = DicomSequence([_purpose_item()])
    item.ContributionDateTime = contribution_datetime
    item.ContributionDescription = "ensemble pipeline"
    return item


def add_algorithm_identification(
    dataset: Dataset, result: PipelineResult, contribution_datetime: str
) -> None:
    """Append the pipeline and each model run to the object's Contributing Equipment Sequence."""
    items = list(dataset.get("ContributingEquipmentSequence", []))
    items.append(pipeline_item(result, contribution_datetime))
    items.extend(contributing_item(run, contribution_datetime) for run in result.model_runs)
    dataset.ContributingEquipmentSequence = DicomSequence(items)


def software_versions(result: PipelineResult) -> tuple[str, ...]:
    """SoftwareVersions for the object itself: the pipeline, then every model version."""
    versions = [f"{result.pipeline_name} {result.pipeline_version}"]
    versions += [f"{run.model_name} {run.model_version}" for run in result.model_runs]
    return tuple(v[:64] for v in versions)
