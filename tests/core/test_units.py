"""Units written for people: no raw UCUM codes on a screen."""

from __future__ import annotations

import pytest

from core.units import readable_unit


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        ("[arb'U]", "arbitrary units"),
        ("[hnsf'U]", "HU"),
        ("HU", "HU"),
        ("mm2", "mm²"),
        ("mm3", "mm³"),
        ("", ""),
        (None, ""),
        ("{ratio}", ""),
        ("[iU]/mL", "iU/mL"),
    ],
)
def test_readable_unit(code: str | None, shown: str) -> None:
    assert readable_unit(code) == shown
