"""Each model's load status as the workers report it (``ModelStatus`` rows, one per model).

A worker writes a row at start-up (its check of every card's weights) and when it first loads a
model or fails to; the console's health and ``pacsnode models list`` read them from any process.
The latest report wins: a worker that restarts shows its models as not loaded yet until it uses
them, never as loaded by a process that is gone.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db.engine import Database
from node.db.orm import ModelStatus, utcnow


def record(
    session: Session, name: str, state: str, *, device: str = "", error: str = "", worker: str = ""
) -> None:
    """Store ``name``'s status (insert or replace)."""
    row = session.get(ModelStatus, name)
    if row is None:
        row = ModelStatus(name=name)
        session.add(row)
    row.state = state
    row.device = device
    row.error = error[-4000:]
    row.worker = worker
    row.updated_at = utcnow()


def by_name(session: Session) -> dict[str, ModelStatus]:
    return {row.name: row for row in session.scalars(select(ModelStatus)).all()}


def recorder(db: Database, worker: str) -> Callable[[str, str, str, str], None]:
    """``(name, state, device, error) -> None`` storing each report in its own transaction."""

    def store(name: str, state: str, device: str, error: str) -> None:
        with db.write() as session:
            record(session, name, state, device=device, error=error, worker=worker)

    return store
