"""Fixtures for ingest tests: a running receiver on the test database."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from core.config import Settings
from node.db.engine import Database
from node.ingest.scp import ReceiverHandle, start_receiver

StartReceiver = Callable[..., ReceiverHandle]


@pytest.fixture
def receiver_on(settings: Settings) -> Iterator[StartReceiver]:
    """Call with a database: starts a receiver on it, stops it at teardown."""
    handles: list[ReceiverHandle] = []

    def start(db: Database, s: Settings | None = None) -> ReceiverHandle:
        handle = start_receiver(s or settings, db)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop(timeout=5)


@pytest.fixture
def receiver(receiver_on: StartReceiver, sqlite_db: Database) -> ReceiverHandle:
    return receiver_on(sqlite_db)
