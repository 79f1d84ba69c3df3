"""The Alembic migrations and the ORM classes must describe the same schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
        cfg = alembic_config(database_url, conn)
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
        cfg = alembic_config(url, conn)
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


def _add_patient(db: Database, uid: str) -> dict[str, int]:
    """A study with a series, an instance, a job, its artifact, a delivery, and a review by a
    user who has an API token, a reset link and a console session."""
    from node.db.orm import (
        ApiToken,
        Artifact,
        Delivery,
        Job,
        PasswordResetToken,
        Review,
        Study,
        User,
        WebSession,
        utcnow,
    )
    from tests.node.jobs.rows import add_study

    add_study(db, uid)
    with db.write() as session:
        study = session.query(Study).filter_by(study_instance_uid=uid).one()
        job = Job(study_pk=study.id, pipeline_name="ct")
        user = User(username=f"r{uid}", password_hash="h", role="radiologist")
        session.add_all([job, user])
        session.flush()
        artifact = Artifact(job_pk=job.id, kind="seg", sop_instance_uid=f"{uid}.2", path="s.dcm")
        session.add(artifact)
        session.flush()
        delivery = Delivery(artifact_pk=artifact.id, destination_name="pacs")
        session.add_all([
            delivery,
            Review(job_pk=job.id, user_pk=user.id, decision="approved"),
            ApiToken(user_pk=user.id, name="t", token_hash=f"a{uid}", scopes=["read"]),
            PasswordResetToken(user_pk=user.id, token_hash=f"p{uid}", expires_at=utcnow()),
            WebSession(token_hash=f"s{uid}", user_pk=user.id),
        ])  # fmt: skip
        session.flush()
        return {
            "study": study.id,
            "job": job.id,
            "artifact": artifact.id,
            "delivery": delivery.id,
            "user": user.id,
        }


def _row_counts(db: Database) -> dict[str, int]:
    from sqlalchemy import text

    tables = ("studies", "series", "instances", "jobs", "artifacts", "deliveries", "reviews",
              "users", "api_tokens", "password_reset_tokens", "web_sessions")  # fmt: skip
    with db.engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}


REBUILT = ("studies", "jobs", "artifacts", "deliveries", "users")


def _schema(db: Database) -> dict[str, list[str]]:
    """The SQL of the rebuilt tables and their indexes as SQLite keeps it, a sorted line per
    column or constraint (a rebuild may list the constraints in another order)."""
    from sqlalchemy import bindparam, text

    query = text("SELECT name, sql FROM sqlite_master WHERE tbl_name IN :t AND sql IS NOT NULL")
    with db.engine.connect() as conn:
        rows = conn.execute(query.bindparams(bindparam("t", expanding=True)), {"t": REBUILT})
        return {name: sorted(line.strip(" ,\t") for line in sql.splitlines()) for name, sql in rows}


def _database_at_0008(url: str) -> Database:
    """A database at revision 0008, on the node's engine (foreign keys on)."""
    from alembic import command

    from node.db.engine import alembic_config, schema_change

    db = Database(url)
    with schema_change(db.engine) as conn:
        command.upgrade(alembic_config(url, conn), "0008_unsynced_autoincrement")
    return db


def test_upgrading_keeps_patient_rows_and_numbers_are_never_given_twice(
    data_dir: Path, tmp_path: Path
) -> None:
    """0008 -> head through the node's own engine (foreign keys on): rebuilding studies, jobs,
    artifacts, deliveries and users deletes none of the rows that reference them (ON DELETE
    CASCADE would at each table's drop), the tables come out as a fresh database's, and after
    the newest study and account are deleted the next ones get new numbers throughout."""
    from sqlalchemy import text

    db = _database_at_0008(f"sqlite:///{data_dir / 'pacsnode.db'}")
    first = _add_patient(db, "1.2.9")
    newest = _add_patient(db, "1.2.10")
    before = _row_counts(db)
    db.migrate()
    assert _row_counts(db) == before
    with db.engine.connect() as conn:  # pooled connections enforce them again
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
        assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
    fresh = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
    fresh.migrate()
    assert _schema(db) == _schema(fresh)  # indexes, unique and cascading references kept
    fresh.dispose()
    tables = [lines for name, lines in _schema(db).items() if name in REBUILT]
    assert len(tables) == 5 and all(any("AUTOINCREMENT" in line for line in t) for t in tables)
    with db.write() as session:  # the newest study and account go, and what hangs from them
        session.execute(text("DELETE FROM studies WHERE id = :id"), {"id": newest["study"]})
        session.execute(text("DELETE FROM users WHERE id = :id"), {"id": newest["user"]})
    assert _row_counts(db) == {table: 1 for table in before}
    later = _add_patient(db, "1.2.11")
    assert all(later[kind] > newest[kind] > first[kind] for kind in first)
    db.dispose()


def test_the_rebuild_refuses_to_run_with_foreign_keys_on(data_dir: Path) -> None:
    """Through a connection that enforces foreign keys (an Alembic command on the node's engine,
    in a transaction), 0009 stops with a message naming the way, before it deletes anything."""
    import pytest
    from alembic import command

    from node.db.engine import alembic_config

    url = f"sqlite:///{data_dir / 'pacsnode.db'}"
    db = _database_at_0008(url)
    _add_patient(db, "1.2.9")
    before = _row_counts(db)
    with db.engine.connect() as conn:
        cfg = alembic_config(url, conn)
        with pytest.raises(RuntimeError, match="foreign keys off.*node.db.engine.migrate"):
            command.upgrade(cfg, "head")
        conn.rollback()
    assert _row_counts(db) == before
    db.migrate()  # the node's own way
    assert _row_counts(db) == before
    db.dispose()


def _start_like_a_process(url: str, outcomes: Any) -> None:
    """What each of the node's processes does first (in a child process)."""
    try:
        database = Database(url)
        database.migrate()
        database.dispose()
        outcomes.put("ready")
    except Exception as exc:  # noqa: BLE001 - the parent reports it
        outcomes.put(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")


def test_processes_starting_together_each_find_the_schema_ready(database_url: str) -> None:
    """The receiver, worker, dispatcher and console started at once on an empty database each
    upgrade the schema: one does it, the others wait for it and find the head. Before, a
    process that read the version while another upgraded applied the same revisions again
    ("table already exists", "database is locked", a duplicate type on PostgreSQL)."""
    import multiprocessing

    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from node.db.engine import alembic_config

    context = multiprocessing.get_context("spawn")
    outcomes = context.Queue()
    processes = [
        context.Process(target=_start_like_a_process, args=(database_url, outcomes))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    results = sorted(outcomes.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=30)
    assert results == ["ready"] * 4
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    db = Database(database_url)
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [(head,)]
    db.dispose()
