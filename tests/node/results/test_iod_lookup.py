"""highdicom's IOD attribute question, answered once per question: the same answers as
highdicom's own scan, and highdicom's callers ask the remembered one once results are built."""

from __future__ import annotations

import highdicom._standard_utils as standard_utils
import highdicom.base
import highdicom.sr.content
import pytest
from pydicom.uid import UID

import node.results.source  # noqa: F401 - installs the lookup, as producing results does
from node.results import iod_lookup

CT = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
RETIRED_US = "1.2.840.10008.5.1.4.1.1.6"


@pytest.mark.parametrize(
    ("attribute", "sop_class", "exclude"),
    [
        ("NumberOfFrames", CT, None),
        ("NumberOfFrames", ENHANCED_CT, None),
        ("NumberOfFrames", UID(SEG), None),
        ("ContentDate", SEG, None),
        ("PixelData", CT, ["IconImageSequence"]),
        ("FloatPixelData", CT, ["IconImageSequence"]),
        ("TotalPixelMatrixRows", CT, None),
        ("NumberOfFrames", RETIRED_US, None),
    ],
)
def test_same_answer_as_highdicoms_scan(
    attribute: str, sop_class: str, exclude: list | None
) -> None:
    expected = iod_lookup._ORIGINAL(attribute, sop_class, exclude)
    assert iod_lookup.is_attribute_in_iod(attribute, sop_class, exclude) is expected
    assert iod_lookup.is_attribute_in_iod(attribute, sop_class, exclude) is expected  # remembered


def test_highdicoms_callers_ask_the_remembered_lookup_and_an_unknown_class_still_raises() -> None:
    for module in (standard_utils, highdicom.base, highdicom.sr.content):
        assert module.is_attribute_in_iod is iod_lookup.is_attribute_in_iod
    assert standard_utils.is_multiframe_image.__globals__["is_attribute_in_iod"] is (
        iod_lookup.is_attribute_in_iod
    )
    for _ in range(2):  # not remembered as an answer
        with pytest.raises(KeyError):
            iod_lookup.is_attribute_in_iod("NumberOfFrames", "1.2.3.4")
