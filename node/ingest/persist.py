"""The one persist path for every way an instance comes in (DICOM, import, upload, Orthanc pull).

``persist_instance`` returns only after the bytes *and* the database row are durable, so a
success status sent to a modality means the instance survives a crash or power cut.

Order of work: parse the header (no pixel decoding; structure checked, see ``header``) → check the
disk watermark → write the bytes under the final name: a small received data set (held in memory,
``IncomingFile.in_memory``) straight to it with ``O_EXCL`` (``Spool.create_new``); anything else to
a temp file given its final name with a hard link (``Spool.publish_new``: never replaces an existing
file) — still in the association's thread, so concurrent associations write in parallel → submit
to the *group committer*, which has the directory fsynced by its ``DirSyncer`` thread while the
association's thread ``fdatasync``s the file (name first, then sync: one journal commit carries
data and name) → the committer commits. It has no thread of its own: a submitter that
finds no commit running leads it (``GroupCommitter``), taking everything queued by concurrent
associations, waiting for their data and directory syncs, and in one transaction inserting the
rows and committing — one directory fsync per syncer round and directory, and one commit (one WAL
fsync) per group instead of per instance; a lone association does all this in its own thread.
A small data set (setting ``write_ahead_kb``) of a known series skips its own data and directory
syncs: its bytes are inserted with its row, so the group's commit makes both durable, and the
spool is synced in bulk later (``write_ahead``: one flush per group instead of three per instance
over one association; a crash's emptied files are rewritten from the rows at the next start). The
steady state (every instance of a series that already has a row) is written by
``InstanceAppender`` on a persistent DBAPI connection; everything else by ``upsert_instances``. A
file whose final name was taken (a duplicate, or a crash's leftover) waits under a temp name and is
renamed over it by the committer only when its row is new, and discarded for a duplicate. The file
and its name are durable before the row commits, so a row never points at a missing file, and the
success status goes back only after that commit; a crash in between leaves at most an
unreferenced (possibly partial) file under the final name that the sender's retry replaces
(docs/performance.md §4).

Duplicates: an instance whose SOP Instance UID already has a row is acknowledged with SUCCESS and
``duplicate=True``; the first copy's file and row are kept and no count changes (Orthanc's default,
``OverwriteInstances: false``). That makes re-sending a study idempotent. Two *different* receiver
processes racing on the same new UID on PostgreSQL is the one case where the later file may win
(the row is still single); senders do not do that in practice.

Without a running committer for the database (import, upload, tests) the same batch code runs
inline in the caller's thread with a batch of one.

``persist_received`` is the same path for a C-STORE data set received by ``spool.IncomingFile``:
held in memory up to ``HEAD_BYTES`` (written once, straight to its final name), streamed to a
spool temp file beyond (its header read in place through mmap, the temp file linked to its final
name — no copy of the bytes in memory); either way the header is checked against the command's
UIDs first.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import mmap
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import event, select
from sqlalchemy.exc import SQLAlchemyError

from core.config import Settings
from core.domain import Association, InstanceHeader, StoreStatus
from node.db.engine import Database
from node.db.orm import Instance
from node.db.repositories.instance_appender import InstanceAppender
from node.db.repositories.instances import NewInstance, upsert_instances
from node.ingest.dir_sync import DirSync, DirSyncer
from node.ingest.header import HeaderError, ParsedInstance, build_file_meta, parse_instance
from node.ingest.spool import (
    IncomingFile,
    InsufficientSpace,
    Spool,
    check_free_space,
    relative_path,
    temp_owner,
)
from node.ingest.write_ahead import BulkSyncer, recover_unsynced, write_ahead_limit
from node.ingest.writer_turns import WriterTurns

log = logging.getLogger(__name__)
MAX_BATCH = 256
_FILE_CHUNK = 1 << 20  # imports copy files to the spool in reads of this size
JOIN_WAIT_S = 0.002


@dataclass(frozen=True)
class PersistOutcome:
    """What happened to one instance; ``status`` is what the DIMSE handler returns."""

    status: StoreStatus
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    duplicate: bool = False
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status is StoreStatus.SUCCESS


@dataclass
class _Pending:
    item: NewInstance
    temp: Path
    outcome: PersistOutcome | None = None  # set by the leader that committed it
    wake: threading.Event = field(default_factory=threading.Event)  # outcome set, or lead handed on
    final: Path | None = None  # already under its final name (``Spool.publish_new``)
    unsynced: Path | None = None  # its data still to be synced (``sync_data``), by its thread
    unsynced_fd: int | None = None  # or its open descriptor (``Spool.create_new``), closed then
    dir_sync: DirSync | None = None  # its final name's directory sync, requested from ``DirSyncer``
    synced: threading.Event = field(default_factory=threading.Event)
    sync_error: OSError | None = None
    data: bytes | None = None  # the whole file, when small enough for write-ahead
    deferred: bool = False  # not synced: its bytes go into its commit (``write_ahead``)

    def sync_data(self, spool: Spool) -> None:
        """Make the file's data durable (when ``unsynced``); record a failure, never raise."""
        try:
            if self.unsynced_fd is not None:
                fd, self.unsynced_fd = self.unsynced_fd, None
                spool.sync_fd(fd)
            elif self.unsynced is not None:
                spool.sync_file(self.unsynced)
        except OSError as exc:
            self.sync_error = exc
        finally:
            self.synced.set()


_spools: dict[tuple[str, bool], Spool] = {}
_spools_lock = threading.Lock()
_committers: dict[int, GroupCommitter] = {}
_durable_engines: weakref.WeakSet[Any] = weakref.WeakSet()


def spool_for(settings: Settings) -> Spool:
    """One Spool per data directory and process, so its directory cache is shared."""
    key = (str(settings.data_dir), settings.fsync)
    with _spools_lock:
        spool = _spools.get(key)
        if spool is None:
            spool = _spools[key] = Spool(settings.data_dir, settings.fsync)
        return spool


def make_sqlite_durable(db: Database, settings: Settings) -> None:
    """SQLite in WAL mode with synchronous=NORMAL may lose the last commits on power loss; the
    receiver acknowledges instances only after a commit, so its connections use FULL."""
    if not (db.sqlite and settings.fsync) or db.engine in _durable_engines:
        return

    @event.listens_for(db.engine, "connect")
    def _full_sync(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA synchronous=FULL")

    _durable_engines.add(db.engine)
    db.engine.dispose()  # pooled connections reconnect, so every one gets the pragma


def persist_instance(
    db: Database,
    settings: Settings,
    raw: bytes | memoryview,
    assoc: Association,
    *,
    transfer_syntax_uid: str | None = None,
) -> PersistOutcome:
    """Store one instance durably and index it; never raises for bad input (see module doc).

    ``raw`` is a Part-10 file, or a bare dataset encoded in ``transfer_syntax_uid`` (a file meta
    header is then prepended; the dataset bytes are stored exactly as received).
    """
    who = f"{assoc.calling_ae or assoc.source}@{assoc.peer_host or 'local'}"
    try:
        parsed = parse_instance(raw, transfer_syntax_uid)
    except HeaderError as exc:
        log.warning("refused instance from %s: cannot understand: %s", who, exc)
        return PersistOutcome(StoreStatus.CANNOT_UNDERSTAND, reason=str(exc))
    size = len(memoryview(raw).cast("B"))
    return _persist_parsed(db, settings, parsed, size, lambda: iter([raw]), assoc, who)


def persist_file(
    db: Database,
    settings: Settings,
    path: Path,
    assoc: Association,
    *,
    transfer_syntax_uid: str | None = None,
) -> PersistOutcome:
    """:func:`persist_instance` for a file on disk, never held in memory whole.

    The header is parsed from a read-only mapping (only the pages holding element headers are
    touched) and the file is copied to the spool in 1 MiB reads, so importing a 2 GB instance
    costs megabytes of memory, as streaming a C-STORE does.
    """
    who = f"{assoc.calling_ae or assoc.source}@{assoc.peer_host or 'local'}"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else None
    except OSError as exc:
        return PersistOutcome(StoreStatus.PROCESSING_FAILURE, reason=f"cannot read: {exc}")
    try:
        with memoryview(mapping if mapping is not None else b"") as view:
            parsed = parse_instance(view, transfer_syntax_uid)
    except HeaderError as exc:
        log.warning("refused instance from %s: cannot understand: %s", who, exc)
        return PersistOutcome(StoreStatus.CANNOT_UNDERSTAND, reason=str(exc))
    finally:
        if mapping is not None:
            with contextlib.suppress(BufferError):  # a view still held: the GC closes it
                mapping.close()

    def read_chunks() -> Iterator[bytes]:
        with open(path, "rb") as handle:
            while chunk := handle.read(_FILE_CHUNK):
                yield chunk

    return _persist_parsed(db, settings, parsed, size, read_chunks, assoc, who)


def _persist_parsed(
    db: Database,
    settings: Settings,
    parsed: ParsedInstance,
    size: int,
    data: Callable[[], Iterator[bytes | memoryview]],
    assoc: Association,
    who: str,
) -> PersistOutcome:
    """Write the parsed instance's bytes (``data()``) under its spool name and record its row."""
    header = parsed.header
    try:
        check_free_space(settings, size)
    except InsufficientSpace as exc:
        log.error("refused instance %s from %s: %s", header.sop_instance_uid, who, exc)
        return _outcome(header.sop_instance_uid, header.study_instance_uid,
                        StoreStatus.OUT_OF_RESOURCES, reason=str(exc))  # fmt: skip

    def chunks() -> Iterator[bytes | memoryview]:
        if not parsed.has_file_meta:
            yield build_file_meta(header.sop_class_uid, header.sop_instance_uid,
                                  header.transfer_syntax_uid, assoc.calling_ae)  # fmt: skip
        yield from data()

    relative = relative_path(header.study_instance_uid, header.series_instance_uid,
                             header.sop_instance_uid)  # fmt: skip
    spool = spool_for(settings)
    return _stage_and_commit(db, settings,
                             lambda: _write(spool, relative, chunks(), header, assoc, who))  # fmt: skip


def persist_received(
    db: Database,
    settings: Settings,
    incoming: IncomingFile,
    assoc: Association,
    *,
    transfer_syntax_uid: str,
    sop_class_uid: str,
    sop_instance_uid: str,
) -> PersistOutcome:
    """Store a C-STORE data set already streamed to ``incoming`` (its file meta, built from the
    command's UIDs, first); never raises for bad input. Consumes ``incoming``: it is published or
    discarded.

    The data set must be what the command announced, as storescp checks: a SOP Class or Instance
    UID that differs from the command's Affected SOP Class/Instance UID is refused with 0xA900
    (Data Set does not match SOP Class), so no success status ever names another instance."""
    who = f"{assoc.calling_ae or assoc.source}@{assoc.peer_host or 'local'}"
    try:
        with incoming.mapped() as view:
            header = parse_instance(view, transfer_syntax_uid).header
    except HeaderError as exc:
        incoming.discard()
        log.warning(
            "refused instance %s from %s: cannot understand: %s", sop_instance_uid, who, exc
        )
        return PersistOutcome(StoreStatus.CANNOT_UNDERSTAND, reason=str(exc))
    except OSError as exc:
        incoming.discard()
        log.error("cannot read back instance %s from %s: %s", sop_instance_uid, who, exc)
        return PersistOutcome(StoreStatus.PROCESSING_FAILURE, reason=str(exc))
    mismatch = _mismatch(header, sop_class_uid, sop_instance_uid)
    if mismatch:
        incoming.discard()
        log.warning("refused instance %s from %s: %s", sop_instance_uid, who, mismatch)
        return PersistOutcome(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, reason=mismatch)
    try:
        check_free_space(settings, 0)  # the bytes are on disk already: only the watermark counts
    except InsufficientSpace as exc:
        incoming.discard()
        log.error("refused instance %s from %s: %s", sop_instance_uid, who, exc)
        return PersistOutcome(StoreStatus.OUT_OF_RESOURCES, reason=str(exc))
    relative = relative_path(header.study_instance_uid, header.series_instance_uid,
                             header.sop_instance_uid)  # fmt: skip
    spool = spool_for(settings)
    write_ahead_bytes = write_ahead_limit(settings, db)
    return _stage_and_commit(db, settings,
                             lambda: _publish_received(spool, incoming, relative, header, assoc,
                                                       who, write_ahead_bytes))  # fmt: skip


def _mismatch(header: InstanceHeader, sop_class_uid: str, sop_instance_uid: str) -> str:
    """Why the data set is not the one the command announced ("" when it is)."""
    if header.sop_class_uid != sop_class_uid:
        return (f"data set SOP Class UID {header.sop_class_uid} differs from the command's "
                f"Affected SOP Class UID {sop_class_uid}")  # fmt: skip
    if header.sop_instance_uid != sop_instance_uid:
        return (f"data set SOP Instance UID {header.sop_instance_uid} differs from the command's "
                f"Affected SOP Instance UID {sop_instance_uid}")  # fmt: skip
    return ""


Stage = Callable[[], "_Pending | PersistOutcome"]


def _stage_and_commit(db: Database, settings: Settings, stage: Stage) -> PersistOutcome:
    """Put the file under its final name (``stage``), then record the row: through the group
    committer when one runs for ``db``, else inline as a batch of one."""
    committer = _committers.get(id(db))
    if committer is None or not committer.running:
        pending_or_outcome = stage()
        if isinstance(pending_or_outcome, PersistOutcome):
            return pending_or_outcome
        make_sqlite_durable(db, settings)
        spool = spool_for(settings)
        pending_or_outcome.sync_data(spool)
        failed = _sync_failures(spool, [pending_or_outcome])
        if failed:
            return failed[0][1]
        return commit_batch(db, settings, spool, [pending_or_outcome])[0]
    committer.writing_started()
    try:
        pending_or_outcome = stage()
    except BaseException:
        committer.writing_ended()
        raise
    if isinstance(pending_or_outcome, PersistOutcome):
        committer.writing_ended()
        return pending_or_outcome
    return committer.submit(pending_or_outcome)


def _publish_received(spool: Spool, incoming: IncomingFile, relative: str, header: InstanceHeader,
                      assoc: Association, who: str,
                      write_ahead_bytes: int) -> _Pending | PersistOutcome:  # fmt: skip
    """Give the streamed file its final name (the committer decides when taken); its data is
    synced by ``_Pending.sync_data`` while a leader fsyncs the directory (the two overlap). A data
    set held in memory is written straight to its final name when that is free."""
    size = incoming.prefix_length + incoming.size
    try:
        incoming.finish(sync=False)
        spool.ensure_parent(relative)
        if incoming.in_memory:
            # a small one's bytes may go into its commit instead of a sync (``write_ahead``)
            data = b"".join(incoming.chunks()) if size <= write_ahead_bytes else None
            chunks = [data] if data is not None else incoming.chunks()
            created = spool.create_new(relative, chunks)
            if created is None:  # taken (a duplicate, or a leftover): a synced temp beside it
                temp, _ = spool.write_temp(relative, chunks)
                incoming.discard()
                return _Pending(NewInstance(header, assoc, relative, size), temp)
            path, fd = created
            incoming.discard()
            return _Pending(NewInstance(header, assoc, relative, size), path, final=path,
                            unsynced_fd=fd, data=data)  # fmt: skip
        final = spool.publish_new(incoming.path, relative)
    except OSError as exc:
        incoming.discard()
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        log.error("cannot write instance %s from %s: %s", header.sop_instance_uid, who, exc)
        status = StoreStatus.OUT_OF_RESOURCES if full else StoreStatus.PROCESSING_FAILURE
        return _outcome(header.sop_instance_uid, header.study_instance_uid, status, reason=str(exc))
    return _Pending(NewInstance(header, assoc, relative, size), incoming.path, final=final,
                    unsynced=final if final is not None else incoming.path)  # fmt: skip


def _write(spool: Spool, relative: str, chunks: Iterable[bytes | memoryview], header: InstanceHeader,
           assoc: Association, who: str) -> _Pending | PersistOutcome:  # fmt: skip
    """Write, fsync and name the file; the pending commit, or the failure outcome."""
    try:
        temp, written = spool.write_temp(relative, chunks)
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        log.error("cannot write instance %s from %s: %s", header.sop_instance_uid, who, exc)
        status = StoreStatus.OUT_OF_RESOURCES if full else StoreStatus.PROCESSING_FAILURE
        return _outcome(header.sop_instance_uid, header.study_instance_uid, status, reason=str(exc))
    try:  # in this thread, so concurrent associations publish (and fsync directories) in parallel
        final = spool.publish_new(temp, relative)
    except OSError as exc:
        spool.discard(temp)
        log.error("cannot publish instance %s from %s: %s", header.sop_instance_uid, who, exc)
        return _outcome(header.sop_instance_uid, header.study_instance_uid,
                        StoreStatus.PROCESSING_FAILURE, reason=str(exc))  # fmt: skip
    return _Pending(NewInstance(header, assoc, relative, written), temp, final=final)


def _outcome(sop: str, study: str, status: StoreStatus, *, duplicate: bool = False,
             reason: str = "") -> PersistOutcome:  # fmt: skip
    return PersistOutcome(status, sop, study, duplicate, reason)


def _discard_failed(spool: Spool, pending: _Pending, exc: OSError) -> PersistOutcome:
    """An instance that could not be made durable: remove its file, the failure status."""
    spool.discard(pending.temp)
    if pending.final is not None:
        spool.discard(pending.final)
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    header = pending.item.header
    return _outcome(header.sop_instance_uid, header.study_instance_uid,
                    StoreStatus.OUT_OF_RESOURCES if full else StoreStatus.PROCESSING_FAILURE,
                    reason=f"cannot sync the file: {exc}")  # fmt: skip


def _sync_failures(spool: Spool, batch: list[_Pending]) -> list[tuple[int, PersistOutcome]]:
    """The instances of ``batch`` whose data sync failed, by position, their files discarded."""
    failed = []
    for index, pending in enumerate(batch):
        if pending.sync_error is not None:
            log.error("cannot sync instance %s: %s", pending.item.header.sop_instance_uid,
                      pending.sync_error)  # fmt: skip
            failed.append((index, _discard_failed(spool, pending, pending.sync_error)))
    return failed


def commit_batch(
    db: Database,
    settings: Settings,
    spool: Spool,
    batch: list[_Pending],
    *,
    dirs_synced: bool = False,
) -> list[PersistOutcome]:
    """Insert rows, publish files and commit for a whole batch, the directories of the files
    named (``publish_new``) fsynced before the commit unless ``dirs_synced`` (the committer did);
    on a database error retry each instance alone so one bad row cannot fail its neighbours."""
    published: list[Path] = []
    try:
        with db.write() as session:
            result = upsert_instances(
                session, [p.item for p in batch], settings.completion.late_arrival
            )
            to_publish = set(result.inserted)
            flags: list[bool] = []
            for pending in batch:
                uid = pending.item.header.sop_instance_uid
                if uid in to_publish:
                    to_publish.discard(uid)
                    if pending.final is None:
                        published.append(spool.publish(pending.temp, pending.item.path))
                    flags.append(False)
                else:
                    if pending.final is None:
                        spool.discard(pending.temp)
                    flags.append(True)
            _discard_linked_duplicates(session, spool, [p for p, dup in zip(batch, flags, strict=True)
                                                        if dup and p.final is not None])  # fmt: skip
            named = [] if dirs_synced else [p.final.parent for p in batch if p.final is not None]
            spool.sync_dirs([*(path.parent for path in published), *named])
    except (SQLAlchemyError, OSError) as exc:
        for path in published:
            spool.discard(path)
        if len(batch) > 1:
            log.warning(
                "group commit of %d instances failed (%s); retrying one by one", len(batch), exc
            )
            return [
                commit_batch(db, settings, spool, [p], dirs_synced=dirs_synced)[0] for p in batch
            ]
        pending = batch[0]
        spool.discard(pending.temp)
        if pending.final is not None:  # never acknowledged: the sender's retry brings it again
            spool.discard(pending.final)
        header = pending.item.header
        log.error("cannot record instance %s: %s", header.sop_instance_uid, exc)
        return [_outcome(header.sop_instance_uid, header.study_instance_uid,
                         StoreStatus.PROCESSING_FAILURE, reason=f"database error: {exc}")]  # fmt: skip
    return [
        _outcome(p.item.header.sop_instance_uid, p.item.header.study_instance_uid,
                 StoreStatus.SUCCESS, duplicate=dup, reason="duplicate: first copy kept" if dup else "")
        for p, dup in zip(batch, flags, strict=True)
    ]  # fmt: skip


def _discard_linked_duplicates(session: Any, spool: Spool, duplicates: list[_Pending]) -> None:
    """A duplicate that already got its final name (``publish_new``) found that name free, so the
    file there is its own. Remove it unless it is where the first copy's row points (then it is
    the only file for that row: a re-sent instance restoring a lost file, or a same-batch race)."""
    if not duplicates:
        return
    uids = [p.item.header.sop_instance_uid for p in duplicates]
    rows = session.execute(select(Instance.sop_instance_uid, Instance.path)
                           .where(Instance.sop_instance_uid.in_(uids)))  # fmt: skip
    recorded = {uid: path for uid, path in rows}
    for pending in duplicates:
        if recorded.get(pending.item.header.sop_instance_uid) != pending.item.path:
            assert pending.final is not None
            spool.discard(pending.final)


class Appender(Protocol):
    """What appends the steady state's rows: ``InstanceAppender`` here, or the receiver pool's
    append service (``append_service.RemoteAppender``)."""

    @property
    def appended(self) -> int: ...

    def append(
        self, items: Sequence[NewInstance], unsynced: Sequence[tuple[str, bytes, str]] = ()
    ) -> bool: ...

    def close(self) -> None: ...


class GroupCommitter:
    """Commits what concurrent handlers submit, in groups, in the submitting threads themselves.

    No thread of its own (flat combining): a handler that submits while no commit is running
    becomes the *leader* and commits everything queued, its own instance included; handlers that
    submit meanwhile queue and wait, and the leader that finishes hands the lead to the first of
    them, who commits all that queued while it waited. A lone association therefore commits
    its own instance in its own thread — no hand-off to a committer thread and back, which cost
    ~14 futex calls and two thread wake-ups per instance (docs/performance.md §4) — while N busy
    associations still share one directory fsync and one commit per group. Only the directory
    fsync leaves the thread (``DirSyncer``, requested as soon as the file is named), so that it
    overlaps the file's ``fdatasync`` instead of paying a second device flush after it. The only
    wait: when a group is smaller than the number of instances being written at that moment
    (``writing``), the leader waits up to ``JOIN_WAIT_S`` for them — never when one association
    is alone.
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        max_batch: int = MAX_BATCH,
        *,
        processes: int = 1,
        appender: Appender | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.spool = spool_for(settings)
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # a leader waiting for writers to join
        self._queue: collections.deque[_Pending] = collections.deque()
        self._leading = False  # a handler is committing (only it touches the appender)
        self.running = False
        self.batches = 0
        self.committed = 0
        self.writing = 0  # instances between header check and submit (their files being written)
        # the steady state's rows, without the ORM (a pool on SQLite: by its append service)
        self.appender: Appender = appender or InstanceAppender(db)
        # the flock serves several receiver processes sharing one SQLite file, and the bulk
        # sync's deletes, which take turns with the commits (durable writes only)
        self._turns = (
            WriterTurns(db) if processes > 1 or settings.fsync else contextlib.nullcontext()
        )
        # an appender given from outside (the append service's client) orders its own writes
        self._append_turns = self._turns if appender is None else contextlib.nullcontext()
        self._dir_syncer: DirSyncer | None = None
        self.bulk_syncer: BulkSyncer | None = None  # durable: small files' bytes in the commit

    def start(self) -> GroupCommitter:
        make_sqlite_durable(self.db, self.settings)
        if self.settings.fsync:  # looked up per call: tests watch ``spool.fsync_dir``
            self._dir_syncer = DirSyncer(lambda directory: self.spool.sync_dirs([directory]))
            recover_unsynced(self.db, self.spool)  # a crash's unsynced files, before any new one
            self.bulk_syncer = BulkSyncer(self.db, self.spool).start()
        self.running = True
        _committers[id(self.db)] = self
        return self

    def writing_started(self) -> None:
        with self._lock:
            self.writing += 1

    def writing_ended(self) -> None:
        with self._lock:
            self.writing -= 1

    def submit(self, pending: _Pending) -> PersistOutcome:
        """Queue an instance whose ``writing_started`` was called, sync its data (while a running
        leader fsyncs its group's directories), then commit its group as leader or wait for the
        leader that does; its outcome."""
        if (
            self.bulk_syncer is not None
            and pending.data is not None
            and pending.unsynced_fd is not None
        ):
            self._defer(pending)
        elif self._dir_syncer is not None and pending.final is not None:
            pending.dir_sync = self._dir_syncer.request(pending.final.parent)
        with self._lock:
            self._queue.append(pending)
            self.writing -= 1
            lead = not self._leading
            if lead:
                self._leading = True
            else:
                self._arrived.notify()
        if pending.deferred:  # its bytes go into the commit instead
            pending.synced.set()
        else:
            pending.sync_data(self.spool)
        if not lead:
            pending.wake.wait()  # committed by a leader, or handed the lead
            if pending.outcome is not None:
                return pending.outcome
        self._lead(pending)
        assert pending.outcome is not None
        return pending.outcome

    @staticmethod
    def _defer(pending: _Pending) -> None:
        """No sync now: the file's bytes are committed with its row (``write_ahead``), and the
        file synced in bulk later — unless its group takes the general path (``_sync_deferred``)."""
        fd, pending.unsynced_fd = pending.unsynced_fd, None
        assert fd is not None
        os.close(fd)
        pending.unsynced = pending.final
        pending.deferred = True

    def _lead(self, own: _Pending) -> None:
        """Commit queued groups until ``own`` has its outcome, then hand the lead on."""
        try:
            while own.outcome is None:
                self._commit(self._take_batch())
        finally:
            with self._lock:
                if self._queue:  # it waits in ``submit``: its thread leads next
                    self._queue[0].wake.set()
                else:
                    self._leading = False

    def _take_batch(self) -> list[_Pending]:
        """The queued instances, up to ``max_batch``; while fewer than are being written, wait up
        to ``JOIN_WAIT_S`` for those to join."""
        deadline = time.monotonic() + JOIN_WAIT_S
        with self._lock:
            while len(self._queue) < self.max_batch and self.writing > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._arrived.wait(remaining):
                    break
            count = min(len(self._queue), self.max_batch)
            return [self._queue.popleft() for _ in range(count)]

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new submissions (callers commit inline), let a running commit finish, close."""
        if _committers.get(id(self.db)) is self:
            del _committers[id(self.db)]
        self.running = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._leading:
                    break
            time.sleep(0.005)
        self.appender.close()
        if self._dir_syncer is not None:
            self._dir_syncer.stop()
        if self.bulk_syncer is not None:
            self.bulk_syncer.stop()
        if isinstance(self._turns, WriterTurns):
            self._turns.close()

    def _append(self, batch: list[_Pending]) -> list[PersistOutcome] | None:
        """The steady state (every instance named, of a known series; see ``InstanceAppender``):
        commit its rows in one transaction. None when the group needs ``commit_batch`` (nothing
        was written then)."""
        if any(p.final is None for p in batch):
            return None
        writer = temp_owner()  # this host's page cache holds the files (``write_ahead``)
        unsynced = [(p.item.header.sop_instance_uid, p.data, writer) for p in batch
                    if p.deferred and p.data is not None]  # fmt: skip
        try:
            done = self.appender.append([p.item for p in batch], unsynced)
        except Exception as exc:  # noqa: BLE001 - any driver's error: the general path decides
            log.warning("fast commit of %d instances failed (%s); using the general path",
                        len(batch), exc)  # fmt: skip
            return None
        if not done:
            return None
        if unsynced and self.bulk_syncer is not None:
            self.bulk_syncer.committed(sum(len(data) for _, data, _ in unsynced))
        return [_outcome(p.item.header.sop_instance_uid, p.item.header.study_instance_uid,
                         StoreStatus.SUCCESS) for p in batch]  # fmt: skip

    def _sync_group(self, batch: list[_Pending]) -> dict[int, PersistOutcome]:
        """Before any row of the group commits: each directory it named files in synced after the
        names (by the ``DirSyncer`` while the associations' threads synced the files' data, else
        here, once per directory); wait for all. The failures, by position in ``batch`` (their
        files discarded: never acknowledged)."""
        failed: dict[int, PersistOutcome] = {}
        try:
            self.spool.sync_dirs(p.final.parent for p in batch
                                 if p.final is not None and p.dir_sync is None
                                 and not p.deferred)  # fmt: skip
        except OSError as exc:
            for pending in batch:
                pending.synced.wait()
                if pending.dir_sync is not None:
                    pending.dir_sync.wait()
            log.error("cannot sync the spool directories of %d instances: %s", len(batch), exc)
            return {i: _discard_failed(self.spool, p, exc) for i, p in enumerate(batch)}
        for index, pending in enumerate(batch):
            pending.synced.wait()
            dir_error = pending.dir_sync.wait() if pending.dir_sync is not None else None
            error = pending.sync_error or dir_error
            if error is not None:
                log.error("cannot sync instance %s: %s", pending.item.header.sop_instance_uid,
                          error)  # fmt: skip
                failed[index] = _discard_failed(self.spool, pending, error)
        return failed

    def _sync_deferred(self, batch: list[_Pending]) -> dict[int, PersistOutcome]:
        """The general path commits no file bytes: sync the deferred files of ``batch`` and their
        directories now. The failures, by position (their files discarded)."""
        deferred = [(i, p) for i, p in enumerate(batch) if p.deferred]
        for _, pending in deferred:
            pending.deferred = False
            pending.sync_data(self.spool)
        failed = {i: _discard_failed(self.spool, p, p.sync_error)
                  for i, p in deferred if p.sync_error is not None}  # fmt: skip
        try:
            self.spool.sync_dirs(p.final.parent for i, p in deferred
                                 if i not in failed and p.final is not None)  # fmt: skip
        except OSError as exc:
            log.error("cannot sync the spool directories of %d instances: %s", len(deferred), exc)
            failed.update({i: _discard_failed(self.spool, p, exc) for i, p in deferred})
        return failed

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            outcome_of: dict[int, PersistOutcome] = self._sync_group(batch)  # the failures
            durable = [i for i in range(len(batch)) if i not in outcome_of]
            if durable:
                with self._append_turns:
                    written = self._append([batch[i] for i in durable])
                if written is None:  # the general path: the deferred files synced first
                    late = self._sync_deferred([batch[i] for i in durable])
                    outcome_of.update((durable[j], o) for j, o in late.items())
                    durable = [i for j, i in enumerate(durable) if j not in late]
                    rest = [batch[i] for i in durable]
                    with self._turns:
                        written = commit_batch(self.db, self.settings, self.spool, rest,
                                               dirs_synced=True) if rest else []  # fmt: skip
                outcome_of.update(zip(durable, written, strict=True))
            outcomes = [outcome_of[i] for i in range(len(batch))]
        except Exception as exc:  # noqa: BLE001 - thread boundary: never leave a handler waiting
            log.exception("group commit failed unexpectedly")
            outcomes = [
                _outcome(p.item.header.sop_instance_uid, p.item.header.study_instance_uid,
                         StoreStatus.PROCESSING_FAILURE, reason=f"internal error: {exc}")
                for p in batch
            ]  # fmt: skip
        self.batches += 1
        self.committed += len(batch)
        for pending, outcome in zip(batch, outcomes, strict=True):
            pending.outcome = outcome
            pending.wake.set()
