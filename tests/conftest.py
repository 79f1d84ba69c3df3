"""Shared fixtures: settings on a temporary data dir and a migrated database on each backend.

``db`` is parametrised over SQLite and PostgreSQL (127.0.0.1:5432, database ``test``); each test
gets its own PostgreSQL schema, dropped afterwards, so tests never see each other's rows. Set
``PACSNODE_TEST_POSTGRES_URL`` to point elsewhere, or to ``skip`` to run SQLite only.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from core.config import Settings, load_settings
from node.db.engine import Database
from node.dispatch import reactor_guard

# The tests' own pynetdicom senders stand in for modalities: pynetdicom's reactor race (a fast
# receiver's C-STORE response lost, the sender stalled 30 s) is the sender's bug, not the node's.
reactor_guard.install()

POSTGRES_URL = os.environ.get(
    "PACSNODE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _shared_data() -> Path:
    """../shared/data beside the checkout; PACSNODE_SHARED_DATA or /work/shared/data for clones
    made elsewhere (e.g. a fresh clone under /tmp)."""
    candidates = [
        os.environ.get("PACSNODE_SHARED_DATA", ""),
        str(PROJECT_ROOT.parent / "shared" / "data"),
        "/work/shared/data",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return PROJECT_ROOT.parent / "shared" / "data"


SHARED_DATA = _shared_data()


_HANDED_OUT: set[int] = set()  # ports free_port gave out in this test process


def free_port() -> int:
    """A port free on 127.0.0.1 now, never one this process handed out before: the kernel can
    give two calls in a row the same ephemeral port, and an Orthanc fixture that asked for a
    DICOM and an HTTP port once got one port for both and could not start."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no port left that this test process has not handed out already")


def _postgres_available() -> bool:
    if POSTGRES_URL == "skip":
        return False
    try:
        eng = create_engine(POSTGRES_URL)
        with eng.connect() as conn:
            conn.execute(text("select 1"))
        eng.dispose()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


_PG_OK: bool | None = None


def postgres_schema_url() -> Iterator[str]:
    """Create a fresh schema, yield a URL whose search_path points at it, drop it afterwards."""
    global _PG_OK
    if _PG_OK is None:
        _PG_OK = _postgres_available()
    if not _PG_OK:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL not reachable at {POSTGRES_URL}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{data_dir / 'pacsnode.db'}"
    else:
        yield from postgres_schema_url()


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def sqlite_db(data_dir: Path) -> Iterator[Database]:
    """SQLite only, for tests whose subject is not the database."""
    database = Database(f"sqlite:///{data_dir / 'pacsnode.db'}")
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def settings(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Test settings on a temporary data dir; no listener port is taken until a test starts one."""
    for key in list(os.environ):
        if key.startswith("PACSNODE_") and not key.startswith("PACSNODE_TEST_"):
            monkeypatch.delenv(key)
    return load_settings(
        None,
        environment="test",
        data_dir=data_dir,
        dicom_host="127.0.0.1",
        dicom_port=free_port(),
        web_port=free_port(),
        min_free_disk_mb=0,
        timezone="UTC",  # dates in pages and results do not depend on the machine's zone
    )


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Say what `make test` left out and how to run it, so a short run is not taken for the suite."""
    # only those deselected for their slow mark: ``-m "not slow and not browser"`` or ``-k`` may
    # leave out others too
    left_out = sum(
        1
        for item in terminalreporter.stats.get("deselected", [])
        if item.get_closest_marker("slow")
    )
    if left_out and "not slow" in (config.option.markexpr or ""):
        terminalreporter.write_line(
            f"{left_out} tests marked slow were left out: `make test SLOW=1` (as .ci/run) runs them"
        )
