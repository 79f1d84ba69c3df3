"""Engine and sessions for SQLite (embedded default) and PostgreSQL (production).

SQLite runs in WAL mode with a busy timeout so that the receiver, worker and web processes can share
one file. Write transactions open with ``BEGIN IMMEDIATE`` (taking the write lock up front), so two
processes never deadlock upgrading a read lock; read transactions stay deferred and never block.
Keep transactions short: commit at the request or job-step boundary, never around inference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from node.db import notify

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# PostgreSQL advisory lock of schema changes: this constant and the hash of the node's schema, as
# node.leader's scheduler lock (one database may hold several nodes' schemas)
MIGRATION_LOCK_KEY = 0x6D69_6772  # b"migr"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys, a busy timeout and explicit BEGINs.

    ``hide_parameters``: a database error's text, which callers log, would otherwise carry the
    statement's values — patient names, IDs and birth dates — into the node's logs."""
    kwargs.setdefault("hide_parameters", True)
    if not is_sqlite(url):
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy issues BEGIN itself (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("sqlite_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class Database:
    """The engine plus read and write session factories; one per process."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.sqlite = is_sqlite(url)
        writer = self.engine.execution_options(sqlite_write=True)
        self.session_factory = sessionmaker(self.engine, expire_on_commit=False)
        self.write_session_factory = sessionmaker(writer, expire_on_commit=False)
        # committed jobs and deliveries wake the loops waiting for them (node/db/notify.py)
        self.wakeups = notify.WakeHub(
            None if self.sqlite else self.engine.url, notify.namespace_of(self.engine.url)
        )
        notify.install(self.session_factory, self.wakeups)
        notify.install(self.write_session_factory, self.wakeups)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for queries; rolled back (never commits) when the block ends."""
        session = self.session_factory()
        try:
            yield session
        finally:
            session.rollback()
            session.close()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back on error."""
        session = self.write_session_factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def migrate(self) -> None:
        migrate(self.url, self.engine)

    def dispose(self) -> None:
        self.wakeups.close()
        self.engine.dispose()


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    """Alembic's configuration; its commands run on ``connection`` when given (see
    :func:`schema_change`), else on an engine of their own."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def migrate(url: str, engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent; every entry point runs it)."""
    with schema_change(engine) as conn:
        command.upgrade(alembic_config(url, conn), "head")


@contextmanager
def schema_change(engine: Engine) -> Iterator[Connection]:
    """A connection for Alembic commands, in one transaction: committed when the block ends,
    rolled back on error.

    One transaction, begun before Alembic sees the connection (else, on SQLite, it commits after
    each revision), and one process at a time: the receiver, worker and console start together,
    each upgrading the schema, and a process that read the version before another's upgrade
    committed would apply the same revisions again ("table already exists"). On SQLite the
    transaction takes the write lock up front (``BEGIN IMMEDIATE``); on PostgreSQL it takes an
    advisory lock. The later processes then find the head.

    On SQLite, foreign keys are off, as its table rebuilds need, and checked before the commit:
    a rebuild (copy, drop, rename) of a table others reference with ON DELETE CASCADE would,
    with them on, delete the referencing rows at the drop. SQLite ignores the pragma inside a
    transaction, so it is set on the bare connection before the transaction begins, and set back
    before the connection returns to the pool."""
    with engine.connect() as conn:
        if engine.dialect.name != "sqlite":
            with conn.begin():
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:k, hashtext(current_schema()))"),
                    {"k": MIGRATION_LOCK_KEY},
                )
                yield conn
            return
        conn = conn.execution_options(sqlite_write=True)
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                yield conn
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(
                        f"the schema change left {len(broken)} rows referencing rows that do "
                        f"not exist (first: {tuple(broken[0])}); nothing was changed"
                    )
        finally:
            driver.execute("PRAGMA foreign_keys=ON")


def open_database(settings: Settings) -> Database:
    """Create the data directory and the database, migrated to the newest schema."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.effective_database_url)
    db.migrate()
    return db
