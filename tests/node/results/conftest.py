"""Fixtures: source series of every kind the writers must handle."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from tests.node.results.factories import (
    MR_SERIES_DIR,
    mr_series,
    read_testdata,
    synthetic_ct_series,
)

SOURCE_KINDS = [
    "synthetic-ct",
    "synthetic-quirks",
    "ct-small",
    "cr-monochrome1",
    "enhanced-ct",
    "mr-ge",
]


def load_sources(kind: str) -> list[Dataset]:
    if kind == "synthetic-ct":
        return synthetic_ct_series()
    if kind == "synthetic-quirks":
        return synthetic_ct_series(quirks=True)
    if kind == "ct-small":
        return [read_testdata("CT_small.dcm")]
    if kind == "cr-monochrome1":
        return [read_testdata("RG3_UNCR.dcm")]
    if kind == "enhanced-ct":
        return [read_testdata("eCT_Supplemental.dcm")]
    if kind == "mr-ge":
        if not MR_SERIES_DIR.is_dir():
            pytest.skip(f"shared sample data absent: {MR_SERIES_DIR}")
        return mr_series()
    raise ValueError(kind)


@pytest.fixture(params=SOURCE_KINDS)
def sources(request: pytest.FixtureRequest) -> list[Dataset]:
    return load_sources(request.param)
