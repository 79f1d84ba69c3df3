"""The Alembic migrations and the ORM classes must describe the same schema."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from node.db.engine import Database
from node.db.orm import Base


def test_migrations_create_every_table(db: Database) -> None:
    tables = set(inspect(db.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_migrations_match_orm(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"ORM and migrations disagree: {diff}"


def test_migrate_is_idempotent(db: Database) -> None:
    db.migrate()
    db.migrate()


def test_sessions_migration_keeps_users_and_drops_the_lockout_columns(database_url: str) -> None:
    """0001 -> head on a database with a user in it, and back (batch mode on SQLite)."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from node.db.engine import alembic_config

    engine = create_engine(database_url)
    with engine.connect() as conn:
        cfg = alembic_config(database_url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            text(
                "INSERT INTO users (username, email, password_hash, role, active, failed_logins,"
                " created_at) VALUES ('old', '', 'h', 'admin', true, 3, CURRENT_TIMESTAMP)"
            )
        )
        command.upgrade(cfg, "head")
        columns = {c["name"] for c in inspect(conn).get_columns("users")}
        assert "failed_logins" not in columns and "locked_until" not in columns
        assert conn.execute(text("SELECT username FROM users")).scalar_one() == "old"
        assert {"web_sessions", "auth_throttle"} <= set(inspect(conn).get_table_names())
        command.downgrade(cfg, "0001")
        assert conn.execute(text("SELECT failed_logins FROM users")).scalar_one() == 0
        conn.commit()
    engine.dispose()


def test_unsynced_files_keep_their_rows_and_never_reuse_a_number(data_dir: Path) -> None:
    """0007 -> head on SQLite with a file's bytes waiting for the bulk sync: the row survives the
    table's rebuild, and a number once given is not given again after its row is deleted (the
    bulk sync relies on it; PostgreSQL's sequence never reuses one, and 0008 leaves it alone)."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from node.db.engine import alembic_config

    url = f"sqlite:///{data_dir / 'pacsnode.db'}"
    engine = create_engine(url)  # foreign keys not enforced: no instance rows needed
    insert = text(
        "INSERT INTO unsynced_files (sop_instance_uid, data, writer) VALUES (:uid, :data, 'h')"
    )
    with engine.connect() as conn:
        cfg = alembic_config(url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0007_unsynced_files")
        conn.execute(insert, {"uid": "1.2.3", "data": b"waiting"})
        command.upgrade(cfg, "head")
        rows = conn.execute(text("SELECT id, sop_instance_uid, data FROM unsynced_files")).all()
        assert [(r[1], r[2]) for r in rows] == [("1.2.3", b"waiting")]
        newest = conn.execute(insert, {"uid": "1.2.4", "data": b"b"}).lastrowid
        conn.execute(text("DELETE FROM unsynced_files WHERE sop_instance_uid = '1.2.4'"))
        again = conn.execute(insert, {"uid": "1.2.5", "data": b"c"}).lastrowid
        assert again > newest > rows[0][0]
        command.downgrade(cfg, "0007_unsynced_files")
        assert conn.execute(text("SELECT count(*) FROM unsynced_files")).scalar_one() == 2
        conn.commit()
    engine.dispose()
