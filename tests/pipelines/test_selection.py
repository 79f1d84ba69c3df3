"""Series selection on real headers: a malformed NumberOfFrames is an input error, not a crash."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from pipelines.contract import SourceSeries, StudyInput
from pipelines.errors import PipelineInputError
from pipelines.selection import select_series, series_facts
from pipelines.spec import SelectionSpec


def test_number_of_frames_that_is_not_a_number_is_an_input_error() -> None:
    path = Path(get_testdata_file("badVR.dcm"))  # NumberOfFrames "1A" (pydicom-data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    series = SourceSeries(str(ds.SeriesInstanceUID), "MR", str(ds.SOPClassUID), (path,))
    with pytest.raises(PipelineInputError, match="NumberOfFrames"):
        series_facts(series)
    spec = SelectionSpec.model_validate({"rules": [{"modality": ["MR", "CT"]}]})
    with pytest.raises(PipelineInputError, match="NumberOfFrames"):
        select_series(StudyInput("1.2", (series,)), spec)
