"""Reading zip archives under limits: member by member, counting the bytes actually inflated.

A zip's central directory states each member's sizes, but nothing forces a hostile archive to tell
the truth, and ``ZipFile.testzip()`` or ``read()`` inflate whole members before anyone can say no.
Here every member is inflated in chunks and refused as soon as it passes the per-member limit, the
archive's running total, or the compression-ratio cap, so memory stays bounded by the member limit
and a zip bomb costs only the few megabytes inflated before the cap trips.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from core.config import ZipLimitSettings

CHUNK = 1 << 20
T = TypeVar("T", bytes, Path)
# below this a member is never a bomb: tiny files (a padded header, an empty series) compress far
# beyond any sane ratio and would otherwise be refused for no gain
RATIO_FLOOR_BYTES = 1 << 20
MIB = 1024 * 1024
# what inflating a damaged member can raise; each is "this member is unreadable", not a crash
UNREADABLE = (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError, EOFError, zlib.error)


class ZipLimitExceeded(ValueError):
    """A member (or the archive) is over a limit; ``whole_archive`` stops the archive, not just
    the member. The message names the member and the setting, never a server path."""

    def __init__(self, message: str, *, whole_archive: bool = False) -> None:
        super().__init__(message)
        self.whole_archive = whole_archive


@dataclass(frozen=True)
class ZipLimits:
    max_member_bytes: int
    max_total_bytes: int
    max_ratio: float

    @classmethod
    def from_settings(cls, settings: ZipLimitSettings) -> ZipLimits:
        return cls(
            int(settings.max_member_mb * MIB), int(settings.max_total_mb * MIB), settings.max_ratio
        )

    def ratio_allowance(self, compressed: int) -> int:
        return max(int(self.max_ratio * compressed), RATIO_FLOOR_BYTES)


def check_declared(member: zipfile.ZipInfo, limits: ZipLimits, total_so_far: int) -> None:
    """Refuse a member on the sizes its header declares (cheap; the inflation re-checks)."""
    name = member.filename
    if member.file_size > limits.max_member_bytes:
        raise ZipLimitExceeded(
            f"{name}: declares {member.file_size / MIB:.0f} MB uncompressed, over the member "
            f"limit of {limits.max_member_bytes / MIB:.0f} MB (zip_import.max_member_mb)"
        )
    if member.file_size > limits.ratio_allowance(member.compress_size):
        raise ZipLimitExceeded(
            f"{name}: compression ratio over {limits.max_ratio:g}:1 (zip_import.max_ratio); "
            "refused as a possible zip bomb"
        )
    if total_so_far + member.file_size > limits.max_total_bytes:
        raise ZipLimitExceeded(
            f"{name}: the archive unpacks to more than {limits.max_total_bytes / MIB:.0f} MB "
            "(zip_import.max_total_mb)",
            whole_archive=True,
        )


def _inflate(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, limits: ZipLimits, total_so_far: int
) -> Iterator[bytes]:
    """The member's bytes in chunks, cut off at the first limit it passes."""
    check_declared(member, limits, total_so_far)
    allowed = min(
        limits.max_member_bytes,
        limits.ratio_allowance(member.compress_size),
        limits.max_total_bytes - total_so_far,
    )
    size = 0
    with archive.open(member) as stream:
        while chunk := stream.read(CHUNK):
            size += len(chunk)
            if size > allowed:
                raise ZipLimitExceeded(
                    f"{member.filename}: inflates beyond what its header declares and past the "
                    "zip_import limits (member size, total or compression ratio); refused",
                    whole_archive=size > limits.max_total_bytes - total_so_far,
                )
            yield chunk


def read_member(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, limits: ZipLimits, total_so_far: int = 0
) -> bytes:
    """The member's bytes, inflated in chunks and cut off at the first limit it passes."""
    return b"".join(_inflate(archive, member, limits, total_so_far))


def extract_member(
    archive: zipfile.ZipFile,
    member: zipfile.ZipInfo,
    limits: ZipLimits,
    target: Path,
    total_so_far: int = 0,
) -> int:
    """Inflate the member into ``target`` chunk by chunk (never whole in memory); its size.

    ``target`` is removed again when a limit cuts the member off or it cannot be read."""
    size = 0
    try:
        with target.open("wb") as out:
            for chunk in _inflate(archive, member, limits, total_so_far):
                out.write(chunk)
                size += len(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return size


def _each_member(
    path: Path, limits: ZipLimits, take: Callable[[zipfile.ZipFile, zipfile.ZipInfo, int], T]
) -> Iterator[tuple[zipfile.ZipInfo, T | Exception]]:
    total = 0
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            if member.is_dir():
                continue
            try:
                taken = take(archive, member, total)
            except ZipLimitExceeded as exc:
                yield member, exc
                if exc.whole_archive:
                    return
                continue
            except UNREADABLE as exc:
                yield member, exc
                continue
            total += taken.stat().st_size if isinstance(taken, Path) else len(taken)
            yield member, taken


def iter_members(
    path: Path, limits: ZipLimits
) -> Iterator[tuple[zipfile.ZipInfo, bytes | Exception]]:
    """Each file member with its bytes, or the reason it was refused or unreadable.

    Raises ``zipfile.BadZipFile`` when ``path`` is not a readable archive at all. A member over the
    total stops the iteration after it is reported.
    """
    return _each_member(path, limits, lambda a, m, total: read_member(a, m, limits, total))


def extract_members(
    path: Path, limits: ZipLimits, folder: Path
) -> Iterator[tuple[zipfile.ZipInfo, Path | Exception]]:
    """:func:`iter_members`, each member inflated into a file in ``folder`` (``member.N``) instead
    of memory: the caller deletes it after use. Memory stays at one chunk whatever the member."""
    counter = iter(range(1 << 62))
    return _each_member(
        path,
        limits,
        lambda a, m, total: _extracted(a, m, limits, folder / f"member.{next(counter)}", total),
    )


def _extracted(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, limits: ZipLimits, target: Path, total: int
) -> Path:
    extract_member(archive, member, limits, target, total)
    return target


def check_archive(path: Path, limits: ZipLimits) -> None:
    """Open the archive and check every member's declared sizes, without inflating anything.

    Raises ``zipfile.BadZipFile`` or :class:`ZipLimitExceeded`; used to refuse an upload up front
    with a clear message (the importer still counts the real bytes while it inflates).
    """
    total = 0
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            if not member.is_dir():
                check_declared(member, limits, total)
                total += member.file_size
