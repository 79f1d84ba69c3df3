"""model_status: each model's load status (loaded / not loaded yet / failed) and last error

Revision ID: 0005_model_status
Revises: 0004_config_in_db
Create Date: 2026-12-05 22:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import node.db.orm

revision = "0005_model_status"
down_revision = "0004_config_in_db"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_status",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("device", sa.String(length=32), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("updated_at", node.db.orm.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_model_status")),
    )


def downgrade() -> None:
    op.drop_table("model_status")
