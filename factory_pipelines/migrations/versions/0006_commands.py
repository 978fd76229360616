"""commands table: commands sent to assets and the acknowledgement each asset gave

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "commands",
        sa.Column("command_id", sa.String(64), primary_key=True),
        sa.Column("asset_id", sa.String(128), nullable=False),
        sa.Column("command", sa.String(64), nullable=False),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True)),
        sa.Column("issued_by", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("acked_at", sa.DateTime(timezone=True)),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_commands_asset_issued", "commands", ["asset_id", "issued_at"])


def downgrade() -> None:
    op.drop_table("commands")
