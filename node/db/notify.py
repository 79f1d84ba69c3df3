"""Wake-up channels: a committed job or due delivery wakes the loop waiting for one, without polling.

Producers need do nothing: a flush that leaves a job queued (new, retried, requeued, released), a
delivery pending (or delivered: an SR may follow it now) or a study receiving marks its channel;
code that writes with plain SQL statements calls :func:`on_commit` (the receiver's inserts). On PostgreSQL that flush also issues ``NOTIFY`` on the
transaction's own connection, so PostgreSQL delivers it when the transaction commits, and never
when it rolls back; every process of the node, on any host, hears it. Each process has one
listener thread on a dedicated psycopg connection that ``LISTEN``s and then waits on the socket
with a timeout (no query while idle) and sets the events of the loops waiting in that process.
On SQLite (one host) a commit sets the events of waiters in the same process (``pacsnode serve``);
a waiter in another process falls back to polling at its ``poll_interval_s``.

A waiter never relies on notifications alone: it sleeps at most ``safety_poll_s`` (a lost
notification costs that much latency, never a job), wakes at the next due retry it was told of,
and polls at the short interval while the listener is reconnecting. After each (re)connect the
listener wakes every waiter, because notifications sent while it was away are lost.

Channel names carry the schema when the database URL sets a ``search_path`` (two nodes sharing a
PostgreSQL database in different schemas, or parallel test runs, do not wake each other).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from core.domain import DeliveryState, JobState, StudyState
from node.db.orm import Delivery, Job, Study

log = logging.getLogger(__name__)

JOBS = "pacsnode_jobs"
DELIVERIES = "pacsnode_deliveries"
STUDIES = "pacsnode_studies"  # instances received, a completion asked for: the completion sweep
CHANNELS = (JOBS, DELIVERIES, STUDIES)

STOP_CHECK_S = 0.2  # how often a sleeping waiter looks at its stop event (no database access)
RECONNECT_MAX_S = 5.0
_PENDING = "pacsnode_notify_pending"  # session.info key: channels this transaction woke
_SENT = "pacsnode_notify_sent"  # session.info key: channels already NOTIFYed in it


def namespace_of(url: URL) -> str:
    """The schema a ``options=-csearch_path=<schema>`` URL selects, as an identifier suffix."""
    options = unquote(str(url.query.get("options", "")))
    match = re.search(r"search_path\s*=\s*([A-Za-z0-9_]+)", options)
    return match.group(1).lower() if match else ""


def channel_name(channel: str, namespace: str) -> str:
    """The PostgreSQL channel for ``channel`` in ``namespace`` (an identifier of <= 63 bytes)."""
    return f"{channel}_{namespace}"[:63] if namespace else channel


# A delivered SEG or overlay may unblock the SR that must follow it (possibly in another dispatcher).
_WAKING_DELIVERY_STATES = (DeliveryState.PENDING.value, DeliveryState.DELIVERED.value)


def _wakes(obj: object) -> str | None:
    """The channel a flushed object wakes: a queued job, a pending (or just delivered) delivery,
    a study still receiving (its completion may be due: forced, or an expected series came)."""
    if isinstance(obj, Job) and obj.state == JobState.QUEUED.value:
        return JOBS
    if isinstance(obj, Delivery) and obj.state in _WAKING_DELIVERY_STATES:
        return DELIVERIES
    if isinstance(obj, Study) and obj.state == StudyState.RECEIVING.value:
        return STUDIES
    return None


class Waker:
    """One loop's wake-up call: set by a notification on its channel (or by the loop's own
    process), waited on with a deadline."""

    def __init__(self, hub: WakeHub, channel: str) -> None:
        self.channel = channel
        self.event = threading.Event()
        self._hub = hub

    def set(self) -> None:
        self.event.set()

    def wait(
        self,
        stop: threading.Event,
        *,
        due_in_s: float | None,
        poll_s: float,
        safety_s: float,
    ) -> bool:
        """Sleep until woken, until ``due_in_s`` (the next scheduled retry) or the safety poll,
        whichever is first; only ``poll_s`` while nothing listens. True when woken.

        The event is cleared on waking, before the caller looks for work, so a notification that
        arrives while it looks wakes the next wait at once instead of being lost."""
        start = time.monotonic()
        limit = safety_s if self._hub.listening else poll_s
        if due_in_s is not None:
            limit = min(limit, max(due_in_s, 0.0))
        while not stop.is_set():
            if not self._hub.listening:
                limit = min(limit, poll_s)
            remaining = start + limit - time.monotonic()
            if remaining <= 0:
                return False
            if self.event.wait(min(remaining, STOP_CHECK_S)):
                self.event.clear()
                return True
        return False

    def close(self) -> None:
        self._hub.unsubscribe(self)


class WakeHub:
    """The wake-up channels of one :class:`~node.db.engine.Database` in this process."""

    def __init__(self, url: URL | None, namespace: str = "") -> None:
        """``url``: the PostgreSQL URL to LISTEN on; None on SQLite (in-process wake-ups only)."""
        self._url = url
        self.namespace = namespace
        self._lock = threading.Lock()
        self._wakers: dict[str, set[Waker]] = {c: set() for c in CHANNELS}
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._connected = threading.Event()
        self._conn: Any = None  # psycopg.Connection while listening
        self.reconnects = 0

    @property
    def postgres(self) -> bool:
        return self._url is not None

    @property
    def listening(self) -> bool:
        """True while the LISTEN connection is up (waiters may then sleep up to the safety poll)."""
        return self._connected.is_set()

    @property
    def backend_pid(self) -> int | None:
        """The LISTEN connection's server process (for operators and tests), None when down."""
        conn = self._conn
        return None if conn is None or not self.listening else int(conn.info.backend_pid)

    def pg_channel(self, channel: str) -> str:
        return channel_name(channel, self.namespace)

    def subscribe(self, channel: str) -> Waker:
        if channel not in self._wakers:
            raise ValueError(f"unknown wake-up channel {channel!r}")
        waker = Waker(self, channel)
        with self._lock:
            self._wakers[channel].add(waker)
            if self.postgres and self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(
                    target=self._listen_loop, name="pg-listen", daemon=True
                )
                self._thread.start()
        return waker

    def unsubscribe(self, waker: Waker) -> None:
        with self._lock:
            self._wakers[waker.channel].discard(waker)

    def fire(self, channels: Iterable[str]) -> None:
        """Wake this process's waiters on ``channels``."""
        with self._lock:
            wakers = [w for c in channels for w in self._wakers.get(c, ())]
        for waker in wakers:
            waker.set()

    def wait_listening(self, timeout: float) -> bool:
        """Block until the LISTEN connection is up (start-up, tests); False after ``timeout``."""
        return self._connected.wait(timeout)

    def close(self) -> None:
        self._closed.set()
        self._connected.clear()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- the listener thread ------------------------------------------------------------------
    def _listen_loop(self) -> None:
        delay = 0.2
        while not self._closed.is_set():
            try:
                self._listen_once()
                delay = 0.2
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect after a pause
                if self._closed.is_set():
                    break
                log.warning(
                    "LISTEN connection lost (%s: %s); waiters poll until it is back",
                    type(exc).__name__,
                    exc,
                )
            finally:
                self._connected.clear()
                self._disconnect()
            self.fire(CHANNELS)  # poll once now: something may have been missed
            if self._closed.wait(delay):
                break
            delay = min(delay * 2, RECONNECT_MAX_S)
            self.reconnects += 1

    def _listen_once(self) -> None:
        import psycopg  # the PostgreSQL driver; only a PostgreSQL node gets here

        assert self._url is not None
        conninfo = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._conn = psycopg.connect(
            conninfo,
            autocommit=True,
            application_name="pacsnode-listen",
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
        by_pg = {self.pg_channel(c): c for c in CHANNELS}
        for pg_name in by_pg:
            self._conn.execute(f'LISTEN "{pg_name}"')
        self._connected.set()
        log.info("listening for wake-ups on %s", ", ".join(by_pg))
        self.fire(CHANNELS)  # anything committed before LISTEN was not heard: look once
        while not self._closed.is_set():
            # waits on the socket (select) for at most the timeout; sends nothing to the server
            for note in self._conn.notifies(timeout=0.5):
                channel = by_pg.get(note.channel)
                if channel is not None:
                    self.fire((channel,))

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken
                conn.close()


def install(factory: sessionmaker[Session], hub: WakeHub) -> None:
    """Make every session of ``factory`` announce the queued jobs and pending deliveries it
    commits: NOTIFY inside the transaction on PostgreSQL, then a local wake-up after commit."""

    @event.listens_for(factory, "after_flush")
    def _after_flush(session: Session, _context: object) -> None:
        woken = {c for obj in (*session.new, *session.dirty) if (c := _wakes(obj)) is not None}
        if not woken:
            return
        session.info.setdefault(_PENDING, set()).update(woken)
        if hub.postgres:
            sent: set[str] = session.info.setdefault(_SENT, set())
            conn = session.connection()
            for channel in sorted(woken - sent):
                conn.exec_driver_sql(f'NOTIFY "{hub.pg_channel(channel)}"')
            sent.update(woken)

    @event.listens_for(factory, "before_commit")
    def _before_commit(session: Session) -> None:
        """NOTIFY what :func:`on_commit` asked for (plain statements, no flush to see them)."""
        if not hub.postgres:
            return
        pending: set[str] = session.info.get(_PENDING, set())
        sent: set[str] = session.info.setdefault(_SENT, set())
        if pending - sent:
            conn = session.connection()
            for channel in sorted(pending - sent):
                conn.exec_driver_sql(f'NOTIFY "{hub.pg_channel(channel)}"')
            sent.update(pending)

    @event.listens_for(factory, "after_commit")
    def _after_commit(session: Session) -> None:
        woken = session.info.pop(_PENDING, set())
        session.info.pop(_SENT, None)
        if woken:
            hub.fire(woken)

    @event.listens_for(factory, "after_rollback")
    def _after_rollback(session: Session) -> None:
        session.info.pop(_PENDING, None)
        session.info.pop(_SENT, None)


def on_commit(session: Session, channel: str) -> None:
    """Wake ``channel``'s waiters when ``session`` commits, for changes made with plain SQL
    statements, which the flush hook cannot see (the receiver's batched instance inserts)."""
    session.info.setdefault(_PENDING, set()).add(channel)
