"""A study's source instances as a streamed zip, and the date retention may delete it.

The zip is written as it is sent (a non-seekable sink: members carry data descriptors), so a
study of any size costs one read buffer of memory. Member names are numbers, never UIDs: a UID
from a peer must not become a path on the recipient's disk.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from core.config import Settings
from web.result_views import data_file

CHUNK = 1 << 20


@dataclass(frozen=True)
class SourceFile:
    series_index: int  # 1-based position of the series in the study
    modality: str
    index: int  # 1-based position of the instance in its series
    relative: str  # the stored path, relative to data_dir


class _Sink(io.RawIOBase):
    """Collects what zipfile writes until the generator hands it on."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


def member_name(item: SourceFile) -> str:
    modality = "".join(c for c in item.modality if c.isalnum())[:8] or "X"
    return f"series{item.series_index:03d}-{modality}/{item.index:05d}.dcm"


def zip_stream(settings: Settings, files: list[SourceFile]) -> Iterator[bytes]:
    """The zip's bytes in pieces; a stored path outside data_dir or a vanished file is skipped
    (listed in ``MISSING.txt`` inside the zip, so the recipient knows)."""
    sink = _Sink()
    missing: list[str] = []
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for item in files:
            try:
                path: Path = data_file(settings, item.relative)
                source = path.open("rb")
            except OSError:
                missing.append(member_name(item))
                continue
            with source, archive.open(member_name(item), "w", force_zip64=True) as member:
                while block := source.read(CHUNK):
                    member.write(block)
                    yield sink.take()
        if missing:
            archive.writestr("MISSING.txt", "\n".join(missing) + "\n")
    yield sink.take()


def retention_after(last_received_at: datetime | None, settings: Settings) -> datetime | None:
    """When retention may delete a study at the earliest (it also waits until the study is
    processed and delivered; a disk below twice ``min_free_disk_mb`` deletes earlier)."""
    if last_received_at is None:
        return None
    return last_received_at + timedelta(days=settings.retention.days)
