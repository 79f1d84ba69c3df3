"""The real inputs a shipped pipeline would process: every pydicom-data image that some pipeline
definition's selection accepts and the decode path reads, plus the shared real MR series.

Used by the dciodvfy sweep (``test_conformance_sweep.py``). A file is an input on its own (one
series), as the listener would index it; files without the identifiers ingest requires are left
out the way ingest refuses them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset

from core.config import PROJECT_ROOT
from core.dicom_uids import InvalidUIDError, checked_uid
from pipelines.contract import SourceSeries, StudyInput
from pipelines.errors import PipelineInputError
from pipelines.preprocess.decode import decode_series
from pipelines.selection import select_series
from pipelines.spec import load_pipeline_configs
from tests.node.results.factories import MR_SERIES_DIR

REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality")


@dataclass(frozen=True)
class SweepInput:
    name: str
    paths: tuple[Path, ...]
    pipeline: str
    nul_padded_codes: bool = False  # as NEMA WG04 files carry them (issue 17)

    def datasets(self) -> list[Dataset]:
        datasets = [pydicom.dcmread(p) for p in self.paths]
        return [_with_nul_padded_codes(d) for d in datasets] if self.nul_padded_codes else datasets


def _with_nul_padded_codes(source: Dataset) -> Dataset:
    """The source as a file whose procedure and anatomy codes are padded with NUL bytes (the
    bytes on disk, read back by pydicom as any received file is; pydicom drops trailing NULs
    itself, leading ones stay)."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "\0CTHEAD\0", "\099WG04\0"
    item.CodeMeaning = "\0CT HEAD WITHOUT CONTRAST\0"
    anatomy = Dataset()
    anatomy.CodeValue, anatomy.CodingSchemeDesignator = "\0T-A0100", "\0SRT"
    anatomy.CodeMeaning = "\0Brain"
    source.ProcedureCodeSequence = [item]
    source.AnatomicRegionSequence = [anatomy]
    buffer = BytesIO()
    source.save_as(buffer, enforce_file_format=True)
    read = pydicom.dcmread(BytesIO(buffer.getvalue()))
    assert str(read.ProcedureCodeSequence[0].CodeValue).startswith("\0")
    return read


def _pipeline_for(series: SourceSeries) -> str | None:
    study = StudyInput("sweep", (series,))
    for name, config in sorted(
        load_pipeline_configs(PROJECT_ROOT / "pipelines" / "definitions").items()
    ):
        try:
            select_series(study, config.selection)
        except PipelineInputError:
            continue
        try:
            decode_series(series, allow_subset=config.selection.dims == 2)
        except PipelineInputError:
            return None
        return name
    return None


def _candidate(path: Path) -> SourceSeries | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - pydicom-data holds deliberately broken files
        return None
    if any(not ds.get(k) for k in REQUIRED) or "Rows" not in ds:
        return None
    try:  # the listener refuses a malformed UID (node/ingest/header.py): not an input
        for keyword in REQUIRED[:4]:
            checked_uid(str(ds.get(keyword)), keyword)
    except InvalidUIDError:
        return None
    if any(str(ds.get(k)).split(".")[0] not in ("0", "1", "2") for k in REQUIRED[:3]):
        return None  # "999.999...": a study UID results must repeat, dciodvfy's "Illegal root"
    return SourceSeries(str(ds.SeriesInstanceUID), str(ds.Modality), str(ds.SOPClassUID), (path,))


def sweep_inputs() -> list[SweepInput]:
    found: list[SweepInput] = []
    for path in sorted(Path(p) for p in get_testdata_files("*.dcm")):
        series = _candidate(path)
        if series is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipeline = _pipeline_for(series)
        if pipeline is not None:
            found.append(SweepInput(path.name, (path,), pipeline))
    if MR_SERIES_DIR.is_dir():
        files = tuple(sorted(MR_SERIES_DIR.glob("*.dcm")))
        found.append(SweepInput("mr-series-ge-adc", files, "demo-3d"))
        found.append(SweepInput("mr-series-ge-adc+nul-codes", files, "demo-3d", True))
    for item in [i for i in found if i.name in ("CT_small.dcm", "RG3_UNCR.dcm")]:
        found.append(SweepInput(f"{item.name}+nul-codes", item.paths, item.pipeline, True))
    return found
