"""studies, jobs, artifacts, deliveries, users: numbers never reused on SQLite (AUTOINCREMENT)

Without AUTOINCREMENT, SQLite numbers a new row one past the highest row left. Deleting the
newest study (an admin removing a study sent for the wrong patient) handed its study, job,
artifact and delivery numbers to the next study that arrived: a review page still open on the
deleted job approved the next patient's job, a bookmarked download fetched another patient's
result, and the audit trail of "job 17" mixed two patients. Likewise a stale admin page's "make
admin" for a deleted account promoted the next account created. PostgreSQL's sequences never reuse
a number.

Each table is copied into one created anew (batch mode), its rows kept; SQLite's sequence starts
at their highest number. The tables are referenced by others with ON DELETE CASCADE, and with
foreign keys enforced SQLite's DROP TABLE deletes the referencing rows first: this revision runs
only where they are not (``node.db.engine.schema_change``, which every upgrade by pacsnode goes
through, turns them off and checks every reference before it commits).

Revision ID: 0009_ids_never_reused
Revises: 0008_unsynced_autoincrement
Create Date: 2026-12-08 00:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0009_ids_never_reused"
down_revision = "0008_unsynced_autoincrement"
branch_labels = None
depends_on = None

TABLES = ("studies", "jobs", "artifacts", "deliveries", "users")


def _recreate(autoincrement: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError(
            "migration 0009 must run with SQLite's foreign keys off: rebuilding 'studies' "
            "would otherwise delete every series and job (ON DELETE CASCADE); upgrade with "
            "'pacsnode db upgrade' (node.db.engine.migrate), which turns them off for it"
        )
    for table in TABLES:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass


def upgrade() -> None:
    _recreate(autoincrement=True)


def downgrade() -> None:
    _recreate(autoincrement=False)
