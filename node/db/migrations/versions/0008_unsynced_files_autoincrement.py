"""unsynced_files: row numbers never reused on SQLite (AUTOINCREMENT)

The bulk sync deletes this host's rows numbered up to the highest it read before it synced the
file system. Without AUTOINCREMENT, SQLite numbers a new row one past the highest row left: when
a study deleted meanwhile took the newest rows with it, a row committed after the sync began got
a covered number and was deleted, its file never synced. PostgreSQL's sequence never reuses one.

Revision ID: 0008_unsynced_autoincrement
Revises: 0007_unsynced_files
Create Date: 2026-12-07 21:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0008_unsynced_autoincrement"
down_revision = "0007_unsynced_files"
branch_labels = None
depends_on = None


def _recreate(autoincrement: bool) -> None:
    """Copy the table into one created anew (batch mode): its rows, the bytes of files not yet
    synced, are kept, and SQLite's sequence starts at their highest number."""
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "unsynced_files", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass


def upgrade() -> None:
    _recreate(autoincrement=True)


def downgrade() -> None:
    _recreate(autoincrement=False)
