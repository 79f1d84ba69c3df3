"""What the listener accepts at association time: Verification and every storage SOP class, each
in every transfer syntax, negotiated as PS3.8 §9.3.2.2 asks.

Storage classes: pynetdicom's ``AllStoragePresentationContexts`` (every current storage class) plus
every *retired* storage class pydicom's UID dictionary knows. Modalities still send retired ones
(US ``1.2.840.10008.5.1.4.1.1.6``, US multi-frame ``…1.1.3``, NM ``…1.1.5``, XA bi-plane
``…1.1.12.3``, …) and storescp and Orthanc store them; pynetdicom leaves them out. Current storage
classes of objects outside a patient's study (hanging protocols, colour palettes, implant
templates, defined protocols, inventories) and the DICOS/DICONDE ones are not listed by pynetdicom
and not accepted: the node indexes every instance under its study and series.

``python -m node.ingest.contexts`` prints table 4.2-2 of docs/conformance.md from this module, and
``tests/docs/test_conformance.py`` checks the document against it.
"""

from __future__ import annotations

import logging
import re
import sys

from pydicom._uid_dict import UID_dictionary
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.sop_class import _STORAGE_CLASSES

from node.ingest import upper_layer as ul

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"


def _retired_storage_classes() -> list[str]:
    """Retired SOP classes of the Storage Service Class (storage commitment is another service)."""
    return [
        uid
        for uid, (name, kind, _info, retired, _keyword) in UID_dictionary.items()
        if kind == "SOP Class" and retired and "Storage" in name and "Commitment" not in name
    ]


CURRENT_STORAGE_CLASSES = tuple(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
RETIRED_STORAGE_CLASSES = tuple(
    sorted(set(_retired_storage_classes()) - set(CURRENT_STORAGE_CLASSES))
)


def supported_contexts() -> dict[str, frozenset[str]]:
    """Abstract syntax → transfer syntaxes accepted: Verification and every storage SOP class,
    each with every transfer syntax pynetdicom knows (the conformance statement's tables)."""
    syntaxes = frozenset(str(ts) for ts in ALL_TRANSFER_SYNTAXES)
    abstract = [VERIFICATION, *CURRENT_STORAGE_CLASSES, *RETIRED_STORAGE_CLASSES]
    return dict.fromkeys(abstract, syntaxes)


SUPPORTED_CONTEXTS = supported_contexts()


def negotiate_contexts(proposed: list[ul.ProposedContext]) -> list[ul.AcceptedContext]:
    """Accept each proposed context whose abstract syntax we support, in the first transfer syntax
    *the sender* listed that we know (so it sends what it has rather than transcoding).

    A presentation context ID must be unique in the request (PS3.8 §9.3.2.2): a repeated ID is
    rejected by leaving it out of the answer — answering it twice would hand the peer two
    results for one ID, of which it could only keep one."""
    results: list[ul.AcceptedContext] = []
    seen: set[int] = set()
    for context in proposed:
        if context.context_id in seen:
            log.warning("presentation context ID %d proposed twice; only the first is answered",
                        context.context_id)  # fmt: skip
            continue
        seen.add(context.context_id)
        known = SUPPORTED_CONTEXTS.get(context.abstract_syntax)
        fallback = context.transfer_syntaxes[0] if context.transfer_syntaxes else ""
        if known is None:
            result = ul.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED
        else:
            chosen = next((ts for ts in context.transfer_syntaxes if ts in known), None)
            result = (
                ul.PC_ACCEPTANCE if chosen is not None else ul.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED
            )
            fallback = chosen or fallback
        results.append(ul.AcceptedContext(context.context_id, result, fallback))
    return results


def scp_sop_class_table() -> str:
    """Table 4.2-2 of docs/conformance.md (SCP SOP classes), in the order the code lists them."""
    rows = ["| SOP Class Name | SOP Class UID | Service |", "|---|---|---|",
            f"| {UID_dictionary[VERIFICATION][0]} | `{VERIFICATION}` | Verification |"]  # fmt: skip
    for uid in sorted(CURRENT_STORAGE_CLASSES, key=_uid_key):
        rows.append(f"| {_name(uid)} | `{uid}` | Storage |")
    for uid in sorted(RETIRED_STORAGE_CLASSES, key=_uid_key):
        rows.append(f"| {_name(uid)} | `{uid}` | Storage (retired) |")
    return "\n".join(rows) + "\n"


def _name(uid: str) -> str:
    """The standard's name; for classes newer than pydicom's dictionary, pynetdicom's keyword
    spelt out (``LabelMapSegmentationStorage`` → ``Label Map Segmentation Storage``)."""
    if uid in UID_dictionary:
        return UID_dictionary[uid][0]
    keyword = next(k for k, v in _STORAGE_CLASSES.items() if v == uid)
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", keyword)


def _uid_key(uid: str) -> tuple[int, ...]:
    return tuple(int(part) for part in uid.split("."))


if __name__ == "__main__":
    sys.stdout.write(scp_sop_class_table())
