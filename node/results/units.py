"""Units as a person reads them, from the UCUM codes the results carry.

Measurements keep UCUM codes (``[arb'U]``, ``[hnsf'U]``, ``mm2``) because the SR must: its
numeric content items are coded in UCUM (PS3.16 CID 7181 and friends). The PDF and the console
are read by people, who should see "arbitrary units", "HU" and "mm²" instead.
"""

from __future__ import annotations

_FOR_PEOPLE = {
    "[arb'U]": "arbitrary units",
    "[hnsf'U]": "HU",
    "HU": "HU",
    "mm2": "mm²",
    "mm3": "mm³",
    "cm2": "cm²",
    "cm3": "cm³",
    "mL": "mL",
    "ml": "mL",
    "1": "",  # UCUM's unity: a plain number
    "{ratio}": "",
    "%": "%",
    "mm": "mm",
    "s": "s",
}


def unit_for_people(ucum: str | None) -> str:
    """The readable form of a UCUM code; an unknown code is shown as it is."""
    if not ucum:
        return ""
    return _FOR_PEOPLE.get(ucum.strip(), ucum.strip())


def with_unit(value: str, ucum: str | None) -> str:
    """``"812.5 HU"``, ``"400.0 arbitrary units"``; the bare value for unitless numbers."""
    unit = unit_for_people(ucum)
    if not unit or value in ("", "-", "—"):
        return value
    return f"{value}{unit}" if unit == "%" else f"{value} {unit}"
