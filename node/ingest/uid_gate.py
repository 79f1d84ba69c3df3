"""The UID check the import, upload and Orthanc-pull entry points run before persisting an instance.

A UID is an identifier, so the node refuses one that is not a plain PS3.5 §9.1 UID (digits and
dots, at most 64 characters, no empty component) at the door, naming the attribute, with a log line
and an audit row — instead of storing it and letting it travel to the worker, the console or a
destination folder. The raw element bytes are checked (not a decoded string), so NUL bytes and
non-ASCII bytes are seen as what they are. A missing UID, a truncated element or an unreadable
header is left to the persist path, which refuses it with its own reason.
"""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.tag import Tag

from core.dicom_uids import InvalidUIDError, checked_uid
from node.db.engine import Database
from node.db.repositories import audit

log = logging.getLogger(__name__)

# The four UIDs that identify an instance and its place in the study hierarchy.
CHECKED_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_TAGS = {name: Tag(name) for name in CHECKED_ATTRIBUTES}
_UNREADABLE = (InvalidDicomError, BytesLengthException, ValueError, TypeError, EOFError, struct.error, IndexError,
               KeyError, OSError, NotImplementedError)  # fmt: skip


def instance_uid_error(raw: bytes | memoryview | Path) -> InvalidUIDError | None:
    """The first invalid identifying UID of a Part-10 file or bare data set (bytes, or a file read
    only as far as its header), or None."""
    source = raw if isinstance(raw, Path) else io.BytesIO(bytes(raw))
    try:
        ds = dcmread(source, force=True, stop_before_pixels=True, defer_size="4 KB",
                     specific_tags=list(_TAGS.values()))  # fmt: skip
        elements: dict[str, Any] = {}
        for name, tag in _TAGS.items():
            element = ds.get_item(tag)  # the raw element: its value is still the encoded bytes
            if element is None:
                continue
            if isinstance(element, RawDataElement) and len(element.value or b"") < element.length:
                return None  # a truncated file: the persist path refuses it as such
            elements[name] = element.value
    except _UNREADABLE:
        return None
    for name, value in elements.items():
        if isinstance(value, bytes) and value.isascii():  # shown as text; non-ASCII stays bytes
            value = value.decode("ascii").rstrip("\0 ")  # padding is tolerated: not shown
        if value is None or value in (b"", ""):
            continue  # missing: the persist path names it
        try:
            checked_uid(value, name)
        except InvalidUIDError as exc:
            return exc
    return None


def record_refusal(
    db: Database, error: InvalidUIDError, *, origin: str, source: str, actor: str = "system"
) -> None:
    """Log and audit one refused instance; ``origin`` says where it came from (file, Orthanc id)."""
    log.warning("%s: refused %s: %s", source, origin, error)
    with db.write() as session:
        audit.record(session, "instance.refused", entity_type=source[:32], entity_id=origin[-128:],
                     actor=actor, detail=str(error))  # fmt: skip
