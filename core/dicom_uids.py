"""DICOM UIDs as the node accepts them, and the UID root the project owns.

Every entry point (C-STORE, console upload, ``pacsnode import``, the Orthanc pull) checks a
peer's UIDs with :func:`checked_uid` before anything is stored, so a UID is a known-safe string
everywhere after that — but no path is ever built from one all the same (see the spool and the
results store). PS3.5 §9.1: digits and dots, at most 64 characters, no empty component. Trailing
NUL or space padding (a common encoder slip) is tolerated and stripped; leading zeros in a
component, although not allowed by the standard, are accepted as DCMTK and Orthanc accept them.
"""

from __future__ import annotations

import hashlib
import re

UID_MAX_LENGTH = 64
_UID_PATTERN = re.compile(r"[0-9]+(?:\.[0-9]+)*")

# The project's own root: a UUID-derived UID (PS3.5 B.2) fixed here, so nothing the node
# identifies itself with lives under someone else's root.
PACSNODE_UID_ROOT = "2.25.176045738061713870712361906390512003241"
IMPLEMENTATION_CLASS_UID = PACSNODE_UID_ROOT + ".1"


class InvalidUIDError(ValueError):
    """A UID that breaks PS3.5 §9.1; the message names the attribute and what is wrong."""

    def __init__(self, attribute: str, value: object, reason: str) -> None:
        self.attribute = attribute
        self.value = value
        super().__init__(f"{attribute} {value!r} is not a valid UID: {reason}")


def checked_uid(value: object, attribute: str) -> str:
    """``value`` as a clean UID string (padding stripped), or :class:`InvalidUIDError`."""
    if isinstance(value, bytes):
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidUIDError(attribute, value, "non-ASCII bytes") from None
    elif isinstance(value, str):
        text = value
    else:
        raise InvalidUIDError(attribute, value, f"expected text, got {type(value).__name__}")
    text = text.rstrip("\0 ")
    if not text:
        raise InvalidUIDError(attribute, value, "empty")
    if len(text) > UID_MAX_LENGTH:
        raise InvalidUIDError(
            attribute, value, f"{len(text)} characters (at most {UID_MAX_LENGTH})"
        )
    if not _UID_PATTERN.fullmatch(text):
        raise InvalidUIDError(
            attribute, value, "only digits and dots, no empty component, are allowed"
        )
    return text


def is_valid_uid(value: object) -> bool:
    try:
        checked_uid(value, "UID")
    except InvalidUIDError:
        return False
    return True


def deterministic_uid(*parts: str) -> str:
    """``2.25.<128 bits of SHA-256 of parts>``: the same inputs always give the same UID.

    The node's one scheme for UIDs it derives (result series and instances, tracking UIDs,
    observer and dimension UIDs), so a retry re-creates the same objects and PACS de-duplicates
    them. Why ``2.25`` (PS3.5 B.2) and not a suffix under :data:`PACSNODE_UID_ROOT`: the root takes
    44 of the 64 characters, leaving room for about 63 bits of hash; ``2.25.`` leaves the full 128
    (39 digits). Why not pydicom's ``generate_uid(prefix=None, entropy_srcs=...)``: it ignores the
    entropy for ``prefix=None`` (a random UUID), and with a prefix it puts our objects under
    pydicom's root, truncated to 64 characters. The parts are joined with a unit separator, so
    ``("a", "bc")`` and ``("ab", "c")`` differ.
    """
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"
