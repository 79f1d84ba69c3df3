"""studies.outcome: how a study ended ("no pipeline matches (modality NM)", "1 of 2 jobs failed")

Revision ID: 0003_study_outcome
Revises: 0002_web_sessions
Create Date: 2026-12-05 19:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_study_outcome"
down_revision = "0002_web_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("outcome", sa.String(length=255), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("outcome")
