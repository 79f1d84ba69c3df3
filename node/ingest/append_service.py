"""One process appends the steady-state rows of a receiver pool on SQLite.

Why: receiver processes that each commit to one SQLite file meet in its write lock (taken in
turns, ``writer_turns.WriterTurns``), and every commit by one process makes the others' connections
throw their page cache away and read the tables again. Measured on the 2-core development machine
(docs/performance.md §3): two processes sharing one file received corpus (b) over four
associations no faster than one process, while the same two processes, each given a database of
its own, were about a third faster. So with ``receiver_processes`` > 1 on SQLite, the pool starts
this service: the receivers keep everything else — files, their syncs, grouping their own
associations, and the general path (new series, duplicates, late arrivals: ``commit_batch``) —
and send ``InstanceAppender.append``'s arguments here over a pipe. The service merges the groups
that arrive together into one transaction on its one connection, whose cache stays warm. On
that machine this brought a 2-process pool level with one process over four associations (it had
fallen behind it), not past it: the processes then wait on the service's round trips (§3). With a
process per association (4) the pool went past one process, whose threads contend for the GIL.

The promise is unchanged: a receiver answers 0x0000 only after the service replied that the
commit (``synchronous=FULL``) is done. When the service is gone, each receiver says so once and
appends its rows itself from then on; the group in flight takes the general path, which records
what the service committed before it died as the duplicate it is (``upsert_instances``). A
receiver the pool starts again after one died is given a new pipe (its service end passed as a
file descriptor over the pool's ``attach`` socket), and the service stays up while the pool may
still start receivers, even with none left for the moment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import recv_handle

from core.config import Settings
from node.db.engine import Database
from node.db.repositories.instance_appender import InstanceAppender
from node.db.repositories.instances import NewInstance
from node.ingest.persist import make_sqlite_durable
from node.ingest.writer_turns import WriterTurns

log = logging.getLogger(__name__)

Unsynced = Sequence[tuple[str, bytes, str]]
Request = tuple[list[NewInstance], list[tuple[str, bytes, str]]]


class AppendServiceError(RuntimeError):
    """The service could not append a group (its database error, as text)."""


class RemoteAppender:
    """``InstanceAppender``'s interface for a receiver of the pool: the rows go to the service.

    Only a group's leader calls ``append`` (``GroupCommitter``), so one pipe per process is
    never used by two threads at once."""

    def __init__(
        self, pipe: Connection, local: InstanceAppender, alone: Callable[[], bool] = lambda: False
    ) -> None:
        self._pipe: Connection | None = pipe
        self._local = local
        self._alone = alone
        self._turns = WriterTurns(local.db)  # for the local appends, with the other receivers
        self.remote_groups = 0  # groups the service committed for this receiver

    @property
    def appended(self) -> int:
        return self.remote_groups + self._local.appended

    def append(self, items: Sequence[NewInstance], unsynced: Unsynced = ()) -> bool:
        """As ``InstanceAppender.append``; raises when the service failed or is gone (the
        caller then takes the general path for this group).

        While no other receiver of the pool holds a connection (``alone``), the rows are
        appended here: nobody else writes, so nothing empties this connection's cache, and the
        round trip to the service would only add its latency (over one association a 2-process
        pool received 921/s through the service against 1,200/s for one process)."""
        if self._pipe is None or self._alone():
            with self._turns:
                return self._local.append(items, unsynced)
        try:
            self._pipe.send((list(items), list(unsynced)))
            reply = self._pipe.recv()
        except (OSError, EOFError) as exc:
            self._pipe = None
            log.error("append service gone (%s): this receiver appends its own rows from now on",
                      exc)  # fmt: skip
            raise AppendServiceError("append service gone") from exc
        if isinstance(reply, str):
            raise AppendServiceError(reply)
        if reply:
            self.remote_groups += 1
        return bool(reply)

    def close(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close()
        self._local.close()
        self._turns.close()


def serve_appends(
    settings: Settings, pipes: list[Connection], attach: Connection | None = None
) -> None:
    """The service's loop: until every receiver closed its pipe (and the pool closed
    ``attach``), answer each request with True (committed), False (not the steady state: nothing
    written) or an error text.

    ``attach``: the pool's socket over which it hands the service end of a new pipe (a file
    descriptor) for a receiver it started again after one died, so the new process appends
    through the service as the one before it did."""
    db = Database(settings.effective_database_url)
    make_sqlite_durable(db, settings)
    appender = InstanceAppender(db)
    turns = WriterTurns(db)
    live = list(pipes)
    try:
        while live or attach is not None:
            requests: list[tuple[Connection, Request]] = []
            for pipe in wait([*live, attach] if attach is not None else live):
                assert isinstance(pipe, Connection)
                if pipe is attach:
                    try:
                        live.append(Connection(recv_handle(attach)))
                        log.info("a restarted receiver's pipe attached (%d receivers)", len(live))
                    except (OSError, EOFError):  # the pool is stopping: no more receivers
                        attach = None
                    continue
                try:
                    requests.append((pipe, pipe.recv()))
                except (OSError, EOFError):  # that receiver stopped
                    live.remove(pipe)
            if requests:
                with turns:
                    _answer(appender, requests)
    finally:
        appender.close()
        turns.close()
        db.dispose()


def _answer(appender: InstanceAppender, requests: list[tuple[Connection, Request]]) -> None:
    """Requests that arrived together in one transaction; when that one is refused (one group
    is not the steady state) or fails, each on its own."""
    if len(requests) > 1:
        items = [item for _, (group, _) in requests for item in group]
        unsynced = [row for _, (_, rows) in requests for row in rows]
        try:
            if appender.append(items, unsynced):
                _reply(requests, [True] * len(requests))
                return
        except Exception as exc:  # noqa: BLE001 - any driver's error: retried one by one
            log.warning("merged append of %d groups failed (%s); appending each alone",
                        len(requests), exc)  # fmt: skip
    replies: list[bool | str] = []
    for _, (group, rows) in requests:
        try:
            replies.append(appender.append(group, rows))
        except Exception as exc:  # noqa: BLE001 - the receiver takes the general path
            replies.append(f"append failed: {exc}")
    _reply(requests, replies)


def _reply(requests: list[tuple[Connection, Request]], replies: Sequence[bool | str]) -> None:
    for (pipe, _), reply in zip(requests, replies, strict=True):
        try:
            pipe.send(reply)
        except OSError:  # the receiver died waiting; its general path decides at its restart
            log.warning("a receiver left before its append was answered")
