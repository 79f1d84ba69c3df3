"""Which series of a study a pipeline processes: facts from headers, matched against the YAML."""

from __future__ import annotations

import pydicom
from pydicom.errors import InvalidDicomError

from core.domain import SeriesFacts
from pipelines.contract import SourceSeries, StudyInput
from pipelines.errors import PipelineInputError
from pipelines.preprocess.geometry import orientation_label
from pipelines.spec import SelectionSpec


def series_facts(series: SourceSeries) -> SeriesFacts:
    """Header facts of a series (first file; no pixels decoded)."""
    if not series.files:
        return SeriesFacts(series.series_instance_uid, modality=series.modality)
    try:
        ds = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    except (InvalidDicomError, OSError) as exc:
        raise PipelineInputError(f"{series.files[0]}: unreadable header: {exc}") from exc
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        shared = ds.get("SharedFunctionalGroupsSequence")
        item = shared[0].get("PlaneOrientationSequence") if shared else None
        iop = item[0].ImageOrientationPatient if item else None
    return SeriesFacts(
        series_instance_uid=series.series_instance_uid,
        modality=str(ds.get("Modality", series.modality) or series.modality),
        sop_class_uid=str(ds.get("SOPClassUID", series.sop_class_uid)),
        series_description=str(ds.get("SeriesDescription", series.series_description) or ""),
        body_part_examined=str(ds.get("BodyPartExamined", "") or ""),
        instance_count=len(series.files),
        image_type=tuple(str(v) for v in (ds.get("ImageType") or ())),
        orientation=orientation_label(tuple(float(v) for v in iop)) if iop else None,
        number_of_frames=_frames(ds, series),
    )


def _frames(ds: pydicom.Dataset, series: SourceSeries) -> int:
    """NumberOfFrames as a count; a value that is not one (``1A`` is in the wild) is an input
    error naming the file, not a crash of the planner."""
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise PipelineInputError(f"{series.files[0]}: NumberOfFrames is not a number") from exc


def select_series(study: StudyInput, selection: SelectionSpec) -> SourceSeries:
    """The matching series with the most slices (ties: study order); else PipelineInputError."""
    best: tuple[int, SourceSeries] | None = None
    seen: list[str] = []
    for series in study.series:
        facts = series_facts(series)
        seen.append(f"{facts.modality or '?'} x{facts.instance_count * facts.number_of_frames}")
        if selection.matches(facts):
            slices = facts.instance_count * max(facts.number_of_frames, 1)
            if best is None or slices > best[0]:
                best = (slices, series)
    if best is None:
        raise PipelineInputError(
            f"study {study.study_instance_uid}: no series fits this pipeline's selection "
            f"(series: {', '.join(seen) or 'none'})"
        )
    return best[1]
