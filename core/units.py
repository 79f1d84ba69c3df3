"""Units as people read them: the UCUM codes results carry (``[arb'U]``, ``[hnsf'U]``, ``mm2``)
written the way a radiologist expects on a screen or a printed page.

The codes themselves stay in the DICOM objects: an SR's numeric content items are coded in UCUM
(PS3.16 CID 7181 and friends). Only what a person reads — the PDF, the console — is translated.
"""

from __future__ import annotations

READABLE_UNITS: dict[str, str] = {
    "[arb'U]": "arbitrary units",
    "[hnsf'U]": "HU",
    "HU": "HU",
    "mm2": "mm²",
    "mm3": "mm³",
    "cm2": "cm²",
    "cm3": "cm³",
    "mL": "mL",
    "ml": "mL",
    "mm": "mm",
    "s": "s",
    "%": "%",
    "1": "",  # UCUM's unity: a plain number
    "{ratio}": "",
}


def readable_unit(code: str | None) -> str:
    """``[arb'U]`` -> ``arbitrary units``, ``mm2`` -> ``mm²``; an unknown code as it is, without
    UCUM's brackets and annotation braces (``kBq/mL`` stays, ``[iU]/mL`` reads ``iU/mL``)."""
    if not code:
        return ""
    code = code.strip()
    if code in READABLE_UNITS:
        return READABLE_UNITS[code]
    return code.replace("[", "").replace("]", "").replace("{", "").replace("}", "")


def with_unit(value: str, code: str | None) -> str:
    """``"812.5 HU"``, ``"400.0 arbitrary units"``, ``"12.0%"``; the bare value for unitless
    numbers and for a missing value (``-``, ``—``)."""
    unit = readable_unit(code)
    if not unit or value in ("", "-", "—"):
        return value
    return f"{value}{unit}" if unit == "%" else f"{value} {unit}"
