"""backlogs table: one written backlog per shift

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backlogs",
        sa.Column("shift_key", sa.String(40), primary_key=True),
        sa.Column("shift_name", sa.String(40), nullable=False),
        sa.Column("shift_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("shift_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("generated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("writer", sa.String(20), nullable=False),
        sa.Column("task_count", sa.Integer, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
    )
    op.create_index("ix_backlogs_shift_start", "backlogs", ["shift_start"])


def downgrade() -> None:
    op.drop_table("backlogs")
