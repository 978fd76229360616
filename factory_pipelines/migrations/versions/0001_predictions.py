"""predictions table

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("asset_id", sa.String(128), nullable=False),
        sa.Column("window_key", sa.String(128), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True)),
        sa.Column("window_end", sa.DateTime(timezone=True)),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("label", sa.String(32), nullable=False),
        sa.Column("produced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mlflow_run_id", sa.String(64)),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("details", sa.JSON),
        sa.UniqueConstraint("model_name", "window_key", "asset_id", name="uq_prediction_window"),
    )
    op.create_index("ix_predictions_model_asset_window", "predictions", ["model_name", "asset_id", "window_start"])
    op.create_index("ix_predictions_window_start", "predictions", ["window_start"])


def downgrade() -> None:
    op.drop_table("predictions")
