"""deliveries.last_error_at: when a delivery last failed, for the destinations' health column

Destinations and routing rules edited in the console are ConfigOverride rows (no new table); the
console's health column needs the time of each destination's last error, which only this column
records (``last_error`` has the text).

Revision ID: 0004_config_in_db
Revises: 0003_study_outcome
Create Date: 2026-12-05 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import node.db.orm

revision = "0004_config_in_db"
down_revision = "0003_study_outcome"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("last_error_at", node.db.orm.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("last_error_at")
