"""Make real-world source headers safe to copy into result objects.

Sources come from modalities and PACS of every age: empty SpecificCharacterSet, person names in
retired forms (more than five components, "Last, First"), missing type-2 attributes, codes padded
with NUL bytes (a ProcedureCodeSequence copied as is made SEG and SR fail dciodvfy), a pixel
spacing of ``0\\0``, a PatientSex of ``0000``. The writers copy patient/study attributes from the
first source, so they get a cleaned *copy* here; the original datasets are never modified. What
cannot be repaired is dropped or left empty, never invented (an unknown sex stays empty, not "O").
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from core.timezones import dicom_offset
from node.results.iod_lookup import install as install_iod_lookup
from node.results.retired_classes import register as register_retired_classes
from pipelines.contract import PipelineResult

register_retired_classes()  # sources of retired SOP classes (old US, NM) are copied from too
install_iod_lookup()  # highdicom's IOD attribute scans, once per question

# Type-2 patient/study attributes every composite object must carry (may be empty).
TYPE2_PATIENT_STUDY_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_PERSON_NAME_ATTRIBUTES = ("PatientName", "ReferringPhysicianName", "OperatorsName")
_VALID_SEX = {"M", "F", "O", ""}
_CODE_TEXT = ("CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning")
_SPACING_ATTRIBUTES = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")


def clean_person_name(value: object) -> str:
    """A PN value in the current form: at most five ``^`` components per group, no padding."""
    text = str(value or "").strip().strip("\x00")
    groups = text.split("=")[:3]
    cleaned = []
    for group in groups:
        if "^" not in group and "," in group:  # retired "Last, First" style
            last, _, first = group.partition(",")
            group = f"{last.strip()}^{first.strip()}"
        parts = group.split("^")
        if len(parts) > 5:
            parts = [*parts[:4], " ".join(parts[4:])]
        cleaned.append("^".join(parts).rstrip("^"))
    return "=".join(cleaned).rstrip("=")


def clean_source(source: Dataset) -> Dataset:
    """A shallow-cleaned copy of one source dataset (pixels shared, header fixed)."""
    dataset = _element_copy(source)
    charset = dataset.get("SpecificCharacterSet")
    if charset is not None and (not charset or all(not str(c).strip() for c in _as_list(charset))):
        del dataset.SpecificCharacterSet
    for keyword in TYPE2_PATIENT_STUDY_ATTRIBUTES:
        if keyword not in dataset or dataset[keyword].value is None:
            setattr(dataset, keyword, "")
    for keyword in _PERSON_NAME_ATTRIBUTES:
        if keyword in dataset and dataset[keyword].value:
            dataset[keyword].value = PersonName(clean_person_name(dataset[keyword].value))
    if str(dataset.get("PatientSex", "")).upper() not in _VALID_SEX:
        dataset.PatientSex = ""  # unknown: type 2 allows empty; "O" (other) would be invented
    _clean_dates_and_times(dataset)
    age = str(dataset.get("PatientAge", "") or "").strip()
    if age:  # AS is nnnD/W/M/Y: "22Y" is written by some modalities, "022Y" is meant
        match = _AGE.match(age)
        dataset.PatientAge = f"{int(match[1]):03d}{match[2].upper()}" if match else ""
    orientation = dataset.get("PatientOrientation")
    if orientation is not None and not _valid_patient_orientation(orientation):
        del dataset.PatientOrientation  # e.g. "L\\PF" for an oblique CT: derived again if needed
    if str(dataset.get("PatientIdentityRemoved", "")).upper() == "YES" and not (
        dataset.get("DeidentificationMethod") or dataset.get("DeidentificationMethodCodeSequence")
    ):  # Patient module: one of the two is type 1C; say what we know rather than drop the flag
        dataset.DeidentificationMethod = "not stated in the source images"
    for keyword in _SPACING_ATTRIBUTES:
        if keyword in dataset and not _positive_pair(dataset[keyword].value):
            del dataset[keyword]  # "0\\0" or garbage: no spacing is better than a wrong one
    for element in dataset:
        if element.VR == "SQ" and _has_padded_code(element.value):
            element.value = copy.deepcopy(element.value)  # the element is ours; its items not
            _strip_codes(element.value)
    return dataset


_AGE = re.compile(r"^(\d{1,3})([DWMYdwmy])$")
_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_DATES = ("StudyDate", "PatientBirthDate", "SeriesDate", "AcquisitionDate", "ContentDate")
_TIMES = ("StudyTime", "PatientBirthTime", "SeriesTime", "AcquisitionTime", "ContentTime")
_ORIENTATION_VALUE = re.compile(r"^[APRLHF]{1,3}$")


def _clean_dates_and_times(dataset: Dataset) -> None:
    """DA and TM in the current form: the ACR-NEMA ``2004.08.26`` and ``11:20:00`` lose their
    separators; a value still not a date/time is emptied (highdicom refuses to copy it)."""
    for keyword in _DATES:
        if keyword in dataset and dataset[keyword].value:
            text = str(dataset[keyword].value).strip().replace(".", "")
            dataset[keyword].value = text if len(text) == 8 and text.isdigit() else ""
    for keyword in _TIMES:
        if keyword in dataset and dataset[keyword].value:
            text = str(dataset[keyword].value).strip().replace(":", "")
            dataset[keyword].value = text if _TM.match(text) else ""


def _valid_patient_orientation(value: object) -> bool:
    values = (
        [str(v) for v in _as_list(value)]
        if not isinstance(value, MultiValue)
        else [str(v) for v in value]
    )
    return len(values) == 2 and all(_ORIENTATION_VALUE.match(v) for v in values)


def _positive_pair(value: object) -> bool:
    try:
        values = [float(v) for v in (value if isinstance(value, MultiValue) else [value])]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return len(values) == 2 and all(v > 0 for v in values)


def _padded(value: object) -> bool:
    return isinstance(value, str) and value != value.strip("\x00 ")


def _has_padded_code(items: Sequence[Dataset]) -> bool:
    for item in items:
        if any(_padded(item.get(k)) for k in _CODE_TEXT):
            return True
        if any(e.VR == "SQ" and _has_padded_code(e.value) for e in item):
            return True
    return False


def _strip_codes(items: Sequence[Dataset]) -> None:
    for item in items:
        for keyword in _CODE_TEXT:
            if _padded(item.get(keyword)):
                setattr(item, keyword, str(item.get(keyword)).strip("\x00 "))
        for element in item:
            if element.VR == "SQ":
                _strip_codes(element.value)


def _element_copy(source: Dataset) -> Dataset:
    """A new dataset with copied top-level elements: edits never reach the caller's dataset,
    while large values (pixel data bytes, sequences we do not edit) are shared, not duplicated."""
    dataset = Dataset()
    for element in source:
        dataset.add(copy.copy(element))
    if hasattr(source, "file_meta"):
        dataset.file_meta = copy.deepcopy(source.file_meta)
    return dataset


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else [value]


def clean_sources(sources: Sequence[Dataset]) -> list[Dataset]:
    """Cleaned copies of every source, in the given order."""
    if not sources:
        raise ValueError("no source datasets given: results need the images they describe")
    cleaned = [clean_source(s) for s in sources]
    _unify_orientation(cleaned)
    return cleaned


_ORIENTATION_TOLERANCE = 1e-4


def _unify_orientation(datasets: list[Dataset]) -> None:
    """Give every slice the first slice's orientation when they differ only by rounding.

    Scanners write ImageOrientationPatient per slice with float noise in the last digit (the GE
    sample series does); highdicom compares them exactly and would refuse the series.
    """
    orientations = [d.get("ImageOrientationPatient") for d in datasets]
    if len(datasets) < 2 or any(o is None or len(o) != 6 for o in orientations):
        return
    first = [float(v) for v in orientations[0]]
    for dataset, orientation in zip(datasets, orientations, strict=True):
        deltas = [abs(float(a) - b) for a, b in zip(orientation, first, strict=True)]
        if max(deltas) < _ORIENTATION_TOLERANCE:
            dataset.ImageOrientationPatient = list(orientations[0])


@dataclass(frozen=True)
class ContentTime:
    """The fixed content date/time of a result (from ``PipelineResult.created_at``), in the
    node's time zone: DICOM dates and times are local, with TimezoneOffsetFromUTC saying which."""

    date: str  # YYYYMMDD
    time: str  # HHMMSS
    moment: datetime  # aware, in the node's zone

    @property
    def datetime_str(self) -> str:
        return f"{self.date}{self.time}"

    @property
    def offset(self) -> str:
        """TimezoneOffsetFromUTC: ``+0200``."""
        return dicom_offset(self.moment)

    @property
    def display(self) -> str:
        """For people (the PDF): ``2024-05-06 09:08 CEST (UTC+0200)``."""
        name = self.moment.tzname() or ""
        label = f" {name}" if name and not name.startswith(("+", "-")) else ""
        return f"{self.moment:%Y-%m-%d %H:%M}{label} (UTC{self.offset})"


def content_time(result: PipelineResult, zone: tzinfo = UTC) -> ContentTime:
    """The result's creation time in ``zone``, so that rebuilding a result yields identical
    bytes. A ``created_at`` without an offset is UTC (the worker writes UTC)."""
    moment = datetime.now(UTC)
    if result.created_at:
        try:
            moment = datetime.fromisoformat(result.created_at)
        except ValueError as exc:
            raise ValueError(f"created_at is not ISO 8601: {result.created_at!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(zone)
    return ContentTime(moment.strftime("%Y%m%d"), moment.strftime("%H%M%S"), moment)
