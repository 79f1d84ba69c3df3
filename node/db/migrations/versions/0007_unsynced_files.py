"""unsynced_files: small received instances' bytes, committed with their rows until synced

Revision ID: 0007_unsynced_files
Revises: 0006_workers
Create Date: 2026-12-06 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_unsynced_files"
down_revision = "0006_workers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unsynced_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("writer", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["sop_instance_uid"],
            ["instances.sop_instance_uid"],
            name=op.f("fk_unsynced_files_sop_instance_uid_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unsynced_files")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_unsynced_files_sop_instance_uid")),
    )


def downgrade() -> None:
    op.drop_table("unsynced_files")
