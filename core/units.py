"""Units as people read them: the UCUM codes results carry (``[arb'U]``, ``[hnsf'U]``, ``mm2``)
written the way a radiologist expects on a screen or a printed page.

The codes themselves stay in the DICOM objects (an SR's measurement units are UCUM); only what a
person reads is translated.
"""

from __future__ import annotations

READABLE_UNITS: dict[str, str] = {
    "[arb'U]": "arbitrary units",
    "[hnsf'U]": "HU",
    "HU": "HU",
    "mm2": "mm²",
    "mm3": "mm³",
    "mm": "mm",
    "%": "%",
    "1": "",
    "{ratio}": "",
}


def readable_unit(code: str | None) -> str:
    """``[arb'U]`` -> ``arbitrary units``, ``mm2`` -> ``mm²``; an unknown code as it is, without
    UCUM's brackets and annotation braces."""
    if not code:
        return ""
    if code in READABLE_UNITS:
        return READABLE_UNITS[code]
    return code.replace("[", "").replace("]", "").replace("{", "").replace("}", "")
