"""Retired storage SOP classes that highdicom cannot copy patient/study attributes from.

Modalities still send images of retired classes (ultrasound ``1.2.840.10008.5.1.4.1.1.6``,
ultrasound multi-frame ``…1.1.3``, NM ``…1.1.5``, XA bi-plane ``…1.1.12.3``); the listener accepts
them (node/ingest/contexts.py). highdicom finds the modules to copy from a source through its SOP
class → IOD table, which lists current classes only, so a SEG or SR of such a source failed with a
bare ``KeyError``. The retired classes' IODs are the predecessors of the current ones and carry
the same Patient and General Study modules, which is all that is copied; the references keep the
source's real SOP class.
"""

from __future__ import annotations

from highdicom._standard_utils import get_sop_class_iod_map

RETIRED_TO_IOD = {
    "1.2.840.10008.5.1.4.1.1.6": "ultrasound-image",
    "1.2.840.10008.5.1.4.1.1.3": "ultrasound-multi-frame-image",
    "1.2.840.10008.5.1.4.1.1.5": "nuclear-medicine-image",
    "1.2.840.10008.5.1.4.1.1.12.3": "x-ray-angiographic-image",
}


def register() -> None:
    """Add the retired classes to highdicom's (cached, shared) table; idempotent."""
    table = get_sop_class_iod_map()
    for uid, iod in RETIRED_TO_IOD.items():
        table.setdefault(uid, iod)
