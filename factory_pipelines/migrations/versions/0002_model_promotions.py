"""model_promotions table: every champion-gate decision, since MLflow keeps no alias history

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_promotions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("candidate_version", sa.String(32), nullable=False),
        sa.Column("alias", sa.String(32), nullable=False),
        sa.Column("previous_champion", sa.String(32)),
        sa.Column("promoted", sa.Boolean, nullable=False),
        sa.Column("forced", sa.Boolean, nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("higher_is_better", sa.Boolean, nullable=False),
        sa.Column("candidate_score", sa.Float),
        sa.Column("champion_score", sa.Float),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(200), nullable=False),
        sa.Column("mlflow_run_id", sa.String(64)),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("details", sa.JSON),
    )
    op.create_index("ix_model_promotions_model_decided", "model_promotions", ["model_name", "decided_at"])


def downgrade() -> None:
    op.drop_table("model_promotions")
