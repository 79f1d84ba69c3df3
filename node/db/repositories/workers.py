"""The worker registry: one heartbeat row per worker process, and what the live ones cover.

Health and the console read it to say which queues (device classes) have no live worker and which
devices the live workers have; the rows are written only by the processes themselves
(:mod:`node.heartbeat`), so a row that stopped moving is a process that died.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from node.db.orm import WorkerProcess

ANY_QUEUE = "*"  # a local-engine worker started without --queues runs every pipeline
RECEIVER = "receiver"  # the engine of a DICOM receiver's row: it serves no queue
FORGET_AFTER = timedelta(days=1)  # a dead worker's row is shown as stale this long, then dropped


@dataclass(frozen=True)
class WorkerView:
    """A registry row as pages and the API show it."""

    name: str
    host: str
    engine: str
    queues: tuple[str, ...]
    devices: tuple[str, ...]
    pid: int
    started_at: datetime
    last_seen_at: datetime
    live: bool


def beat(
    session: Session,
    *,
    name: str,
    host: str,
    engine: str,
    queues: Collection[str],
    devices: Collection[str],
    pid: int,
    now: datetime,
) -> None:
    """Insert or refresh this process's row (a restarted process under the same name restarts
    its ``started_at``); rows of processes gone for a day are dropped on the way."""
    row = session.scalar(select(WorkerProcess).where(WorkerProcess.name == name))
    if row is None:
        row = WorkerProcess(name=name, started_at=now)
        session.add(row)
    elif row.pid != pid or row.host != host:
        row.started_at = now
    row.host, row.engine, row.pid = host, engine, pid
    row.queues, row.devices = sorted(set(queues)), list(dict.fromkeys(devices))
    row.last_seen_at = now
    session.execute(delete(WorkerProcess).where(WorkerProcess.last_seen_at < now - FORGET_AFTER))


def remove(session: Session, name: str) -> None:
    """A clean stop: the process no longer serves its queues."""
    session.execute(delete(WorkerProcess).where(WorkerProcess.name == name))


def workers(session: Session, now: datetime, stale_after_s: float) -> list[WorkerView]:
    """Every registered worker, live ones first, each marked live or stale."""
    cutoff = now - timedelta(seconds=stale_after_s)
    rows = session.scalars(select(WorkerProcess).order_by(WorkerProcess.name)).all()
    views = [
        WorkerView(
            name=r.name,
            host=r.host,
            engine=r.engine,
            queues=tuple(r.queues),
            devices=tuple(r.devices),
            pid=r.pid,
            started_at=r.started_at,
            last_seen_at=r.last_seen_at,
            live=r.last_seen_at >= cutoff,
        )
        for r in rows
    ]
    return sorted(views, key=lambda w: (not w.live, w.name))


def receivers_problem(views: Iterable[WorkerView]) -> str | None:
    """The problem health reports when receivers have registered and none of them still beats
    (each withholds its beat while no process of it answers); None while one does, or when no
    receiver ever registered (a console-only deployment)."""
    rows = [w for w in views if w.engine == RECEIVER]
    if not rows or any(w.live for w in rows):
        return None
    last = max(rows, key=lambda w: w.last_seen_at)
    return (
        f"no DICOM receiver is answering (last seen {last.last_seen_at:%Y-%m-%d %H:%M:%S} UTC,"
        f" {last.name})"
    )


def live_devices(views: Iterable[WorkerView]) -> list[str]:
    """The devices some live worker has (``cpu`` first, then in name order)."""
    found = {d for w in views if w.live for d in w.devices}
    return sorted(found, key=lambda d: (d != "cpu", d))


def queue_consumers(
    pipeline_queues: Collection[str], other_queues: Collection[str], views: Sequence[WorkerView]
) -> dict[str, list[str]]:
    """Each queue in use and the live workers consuming it (an empty list: "queue has no
    worker"). ``pipeline_queues`` are also served by a worker of every pipeline (``*``);
    ``other_queues`` (the delivery queue) only by name."""
    live = [w for w in views if w.live]
    out: dict[str, list[str]] = {}
    for queue in sorted(set(pipeline_queues)):
        out[queue] = [w.name for w in live if queue in w.queues or ANY_QUEUE in w.queues]
    for queue in sorted(set(other_queues) - set(pipeline_queues)):
        out[queue] = [w.name for w in live if queue in w.queues]
    return dict(sorted(out.items()))
