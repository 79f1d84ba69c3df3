"""The node's time zone: result ContentDate/Time, the PDF's printed dates and the console's dates.

``timezone`` in the settings is an IANA name (``Europe/Berlin``); empty means the machine's local
zone, found as the operating system names it (``TZ``, ``/etc/timezone``, the ``/etc/localtime``
link) so that daylight saving time is followed, with the current UTC offset as the last resort.
Times are stored in UTC everywhere (database, ``PipelineResult.created_at``) and turned into the
node's zone only where a person or a DICOM date/time reads them.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_ZONEINFO_MARKER = "zoneinfo/"


def zone_named(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ValueError naming it when there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: "../x" style names
        raise ValueError(
            f"{name!r} is not an IANA time zone name (e.g. Europe/Berlin, UTC)"
        ) from exc


def local_zone() -> tzinfo:
    """The machine's zone, by name where the system gives one (so DST is followed)."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    try:
        target = str(Path("/etc/localtime").resolve())
        if _ZONEINFO_MARKER in target:
            candidates.append(target.split(_ZONEINFO_MARKER, 1)[1])
    except OSError:
        pass
    for name in candidates:
        if name:
            try:
                return zone_named(name)
            except ValueError:
                continue
    return datetime.now().astimezone().tzinfo or ZoneInfo("UTC")


def node_zone(name: str) -> tzinfo:
    """The zone the node shows times in: ``name`` (a setting, validated at start-up) or local."""
    return zone_named(name) if name else local_zone()


def dicom_offset(moment: datetime) -> str:
    """TimezoneOffsetFromUTC of an aware datetime: ``+HHMM`` / ``-HHMM`` (PS3.3 C.12.1.1.8)."""
    offset = moment.utcoffset()
    if offset is None:
        raise ValueError("a naive datetime has no UTC offset")
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
