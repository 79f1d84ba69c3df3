"""The spool: received bytes on disk, written so that a crash never leaves a half file in place.

Layout: ``<data_dir>/spool/<study>/<series>/<sop>.dcm`` (the path stored in the Instance row is
relative to the data directory, so the data directory can move). A file is written to a temporary
name and fdatasynced, then gets its final name (hard link, or rename over a leftover); the
committer fsyncs the directory before the row commits, so once the name is durable the file is
complete. (A received data set is synced right after its link instead, so that one journal commit
carries both; a crash between leaves a name without a row, which the retry replaces. A small one
of a known series is not synced at all until the bulk sync: its bytes are committed with its row,
see ``write_ahead``.)
UIDs come from the network: anything that is not a plain UID is replaced by a hash so a hostile UID
can never escape the spool.

A C-STORE data set is streamed: :class:`IncomingFile` holds it in memory while it fits
``HEAD_BYTES`` (then it is written once, straight to its final name with ``O_EXCL`` when that is
free: ``Spool.create_new``), and beyond writes each fragment to a temp file under
``spool/.incoming`` as it arrives (memory stays bounded whatever the size); once complete that file
is read in place through ``mmap``, given its final name and then synced.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import mmap
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from core.config import Settings

_SAFE_NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
TEMP_SUFFIX = ".part"
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV}
INCOMING_DIR = ".incoming"
_incoming_names = itertools.count()
HEAD_BYTES = 256 << 10  # data sets up to this size are also kept in memory (``IncomingFile``)


class InsufficientSpace(OSError):
    """Free space is below ``min_free_disk_mb``: refuse instead of filling the disk."""


def safe_component(uid: str) -> str:
    """A file-name-safe stand-in for a UID (the UID itself when it is well formed)."""
    if _SAFE_NAME.match(uid) and ".." not in uid:
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def relative_path(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The path stored in the Instance row, relative to the data directory."""
    return "/".join(
        (
            "spool",
            safe_component(study_uid),
            safe_component(series_uid),
            safe_component(sop_uid) + ".dcm",
        )
    )


def check_free_space(settings: Settings, incoming_bytes: int) -> None:
    """Raise :class:`InsufficientSpace` if storing ``incoming_bytes`` would cross the watermark."""
    if settings.min_free_disk_mb <= 0:
        return
    target = settings.spool_dir if settings.spool_dir.exists() else settings.data_dir
    stats = os.statvfs(target)
    free = stats.f_bavail * stats.f_frsize
    needed = settings.min_free_disk_mb * 1024 * 1024 + incoming_bytes
    if free < needed:
        raise InsufficientSpace(
            f"free space {free // (1024 * 1024)} MB is below min_free_disk_mb="
            f"{settings.min_free_disk_mb:g} (+{incoming_bytes} bytes incoming)"
        )


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Writes instance files; remembers which directories exist so the hot path skips mkdir."""

    def __init__(self, data_dir: Path, fsync: bool) -> None:
        self.data_dir = data_dir
        self.fsync = fsync
        self._known_dirs: set[str] = set()
        self._lock = threading.Lock()
        self._root = str(data_dir)  # string keys: the hot path builds no Path for known folders
        self._incoming = data_dir / "spool" / INCOMING_DIR

    def _ensure_dir(self, directory: Path) -> None:
        key = str(directory)
        if key in self._known_dirs:
            return
        with self._lock:
            created: list[Path] = []
            probe = directory
            while not probe.exists():
                created.append(probe)
                probe = probe.parent
            directory.mkdir(parents=True, exist_ok=True)
            if self.fsync:  # make the new directory entries themselves durable
                for new_dir in reversed(created):
                    fsync_dir(new_dir.parent)
            if len(self._known_dirs) > 100_000:
                self._known_dirs.clear()
            self._known_dirs.add(key)

    def ensure_parent(self, relative: str) -> None:
        """Create (durably) the directory a final name lives in."""
        if f"{self._root}/{relative.rpartition('/')[0]}" not in self._known_dirs:
            self._ensure_dir((self.data_dir / relative).parent)

    def open_incoming(self, prefix: bytes) -> IncomingFile:
        """A new temp file under ``spool/.incoming`` that starts with ``prefix`` (file meta)."""
        directory = self._incoming
        self._ensure_dir(directory)
        owner = temp_owner()  # the stale-file clean-up judges only this host's files
        name = f".in{next(_incoming_names)}.{owner}.{_pid()}.{threading.get_ident()}{TEMP_SUFFIX}"
        return IncomingFile(directory / name, prefix, self.fsync)

    def write_temp(self, relative: str, chunks: Iterable[bytes | memoryview]) -> tuple[Path, int]:
        """Write ``chunks`` to a temp file beside ``relative`` and fdatasync it; (temp, size)."""
        final = self.data_dir / relative
        self._ensure_dir(final.parent)
        temp = final.with_name(
            f".{final.name}.{temp_owner()}.{os.getpid()}.{threading.get_ident()}{TEMP_SUFFIX}"
        )
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        size = 0
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                    size += written
            if self.fsync:
                os.fdatasync(fd)  # data and size; the name is made durable with its directory
        except OSError:
            os.close(fd)
            _unlink_quietly(temp)
            raise
        os.close(fd)
        return temp, size

    def publish(self, temp: Path, relative: str) -> Path:
        """Rename a finished temp file to its final name (the caller fsyncs the directory)."""
        final = self.data_dir / relative
        os.replace(temp, final)
        return final

    def publish_new(self, temp: Path, relative: str) -> Path | None:
        """Give a finished temp file its final name unless that name is taken. A hard link, not a
        rename, so an existing file (the first copy of a duplicate) is never replaced here. The
        name is made durable by the committer (``sync_dirs``: one directory fsync per commit group
        and directory, before the rows commit). Returns the final path, or None when the name is
        taken or the filesystem has no hard links: the committer then decides (``publish``)."""
        final = self.data_dir / relative
        try:
            os.link(temp, final)
        except FileExistsError:
            return None
        except OSError as exc:
            if exc.errno in _NO_HARD_LINKS:
                return None
            raise
        try:
            os.unlink(temp)
        except OSError:
            _unlink_quietly(final)
            raise
        return final

    def create_new(
        self, relative: str, chunks: Iterable[bytes | memoryview]
    ) -> tuple[Path, int] | None:
        """Write ``chunks`` straight to the final name when it is free (``O_EXCL``): no temp name,
        link or unlink for a data set already in memory. Returns (final path, open descriptor, not
        yet synced: ``sync_fd`` syncs and closes it), or None when the name is taken (the caller
        then writes a temp file and the committer decides). A failed write removes the file.

        Crash safety: a crash before the row commits leaves a possibly partial file under the
        final name without a row — never acknowledged, and what a crash between link and commit
        left before: the sender's retry finds the name taken, and the committer renames the retry
        over it because its row is new (``commit_batch``)."""
        final = self.data_dir / relative
        try:
            fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        try:
            views = [memoryview(chunk).cast("B") for chunk in chunks]
            done = os.writev(fd, views)  # one call for file meta and data set
            for view in views:
                skip, done = min(done, len(view)), done - min(done, len(view))
                view = view[skip:]
                while view:  # a short write (disk filling up): the rest, or the error
                    view = view[os.write(fd, view) :]
        except OSError:
            os.close(fd)
            _unlink_quietly(final)
            raise
        return final, fd

    def sync_fd(self, fd: int) -> None:
        """``fdatasync`` (when durable) and close a descriptor from ``create_new``."""
        try:
            if self.fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)

    def sync_dirs(self, directories: Iterable[Path]) -> None:
        """fsync each distinct directory once (a commit group's new names, before its commit)."""
        if self.fsync:
            for directory in set(directories):
                fsync_dir(directory)

    def sync_file(self, path: Path) -> None:
        """Make a closed file's content durable (``fdatasync``: data and size, not timestamps).

        Called after the file got its final name: on ext4 the one journal commit this forces
        also carries the new directory entry, so the group's directory fsync finds it done."""
        if self.fsync:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)

    def discard(self, path: Path) -> None:
        _unlink_quietly(path)


class IncomingFile:
    """A data set being received: kept in memory while it fits ``HEAD_BYTES``, else written
    fragment by fragment to a temp file.

    Life: ``write`` as fragments come → ``mapped`` to read it in place → ``finish`` (close, with
    or without fdatasync) → the spool publishes ``path`` (or, for a data set still in memory,
    writes ``chunks`` straight to the final name: ``Spool.create_new``); or ``discard`` at any point.

    A data set of at most ``HEAD_BYTES`` never touches the temp file: for small instances (most of
    a DX, SR or per-frame stream) a temp file, its link to the final name and its unlink cost more
    than holding the bytes (docs/performance.md §4). Past that size the temp file is created and
    what was held is written first, so memory stays bounded whatever the size."""

    def __init__(self, path: Path, prefix: bytes, fsync: bool) -> None:
        self.path = path
        self.prefix_length = len(prefix)
        self.size = 0  # data set bytes written, the prefix not counted
        self._fsync = fsync
        self._prefix = prefix
        self._head: bytearray | None = bytearray()  # the data set while it fits HEAD_BYTES
        self._fd: int | None = None  # the temp file, once the data set outgrew memory

    @property
    def in_memory(self) -> bool:
        """The whole data set is held in memory (no temp file exists)."""
        return self._head is not None

    def chunks(self) -> tuple[bytes, memoryview]:
        """Prefix and data set, for a data set ``in_memory``."""
        assert self._head is not None
        return self._prefix, memoryview(self._head)

    def _write_all(self, view: memoryview) -> None:
        assert self._fd is not None
        while view:
            view = view[os.write(self._fd, view) :]

    def write(self, data: bytes | memoryview) -> None:
        """Append a fragment; an OSError (disk full) leaves the file for ``discard``."""
        view = memoryview(data).cast("B")
        if self._head is not None:
            if self.size + len(view) <= HEAD_BYTES:
                self._head += view
                self.size += len(view)
                return
            held, self._head = self._head, None  # large: to the temp file, read back by ``mapped``
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            self._write_all(memoryview(self._prefix))
            self._write_all(memoryview(held))
        self._write_all(view)
        self.size += len(view)

    def finish(self, *, sync: bool = True) -> None:
        """Close the temp file's descriptor (idempotent), first making the content durable unless
        ``sync`` is False: the receiver syncs the file once it has its final name
        (``Spool.sync_file``). Nothing to do for a data set held in memory."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._fsync and sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def mapped(self) -> Iterator[memoryview]:
        """The data set (after the prefix) as a read-only view of the file, not a copy: parsing a
        2 GB instance touches only the pages holding its elements' headers."""
        if self._head is not None:
            with memoryview(self._head) as head:
                yield head
            return
        with open(self.path, "rb") as handle:
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mapping)
        try:
            with view[self.prefix_length :] as data:
                yield data
        finally:
            view.release()
            with contextlib.suppress(BufferError):  # a view still held elsewhere: GC closes it
                mapping.close()

    def discard(self) -> None:
        held, self._head = self._head, None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if held is None:  # the temp file may exist (a data set held in memory never made one)
            _unlink_quietly(self.path)


_PID = [os.getpid()]  # this process's id without a system call per instance
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def _pid() -> int:
    return _PID[0]


def temp_owner(host: str | None = None, boot_id: str | None = None) -> str:
    """``h<host hash>b<boot hash>``: who wrote a temp file, so that on a volume several hosts share
    only the writer's host judges it (a PID means nothing on another host, or after a reboot)."""
    if host is None and boot_id is None:
        return _this_owner()
    return _owner(socket.gethostname() if host is None else host,
                  _boot_id() if boot_id is None else boot_id)  # fmt: skip


@functools.cache
def _this_owner() -> str:
    """This process's owner token, computed once (every received instance names a temp file)."""
    return _owner(socket.gethostname(), _boot_id())


def _owner(host: str, boot_id: str) -> str:
    digest = hashlib.sha256
    return f"h{digest(host.encode()).hexdigest()[:12]}b{digest(boot_id.encode()).hexdigest()[:8]}"


def remove_stale_temp_files(spool_dir: Path, min_age_s: float = 60.0) -> int:
    """Delete this host's temp files left by a killed process; return how many.

    A file is this host's when its owner token names this host: written before a reboot (another
    boot id), no process of it can be running; written in this boot, its PID must be gone. Files
    of other hosts — or without an owner token — are never touched: their writer may be alive.
    Such files were never acknowledged (the rename comes before the success status), so the
    sender resends them; they are only litter.
    """
    removed = 0
    if not spool_dir.exists():
        return 0
    now = time.time()
    mine = temp_owner()
    host_part = mine[:14]  # "h" + 12 hex digits of the host + "b"
    for path in spool_dir.rglob(f"*{TEMP_SUFFIX}"):
        parts = path.name.split(".")
        try:
            owner, pid = parts[-4], int(parts[-3])
            if not owner.startswith(host_part) or now - path.stat().st_mtime < min_age_s:
                continue
            if owner == mine and _pid_alive(pid):
                continue
        except (ValueError, IndexError, OSError):
            continue
        _unlink_quietly(path)
        removed += 1
    return removed


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: the boot time stands in
        return str(int(time.time() - time.monotonic()) // 60)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
