"""latest_predictions table: the newest prediction per (model, asset), kept on every upsert

`GET /predictions/latest` and the live views read it instead of ranking the whole predictions
table, which grows by every window of every asset.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COLUMNS = (
    "model_name, model_version, asset_id, window_key, window_start, window_end, score, label, "
    "produced_at, mlflow_run_id, dagster_run_id, details"
)


def upgrade() -> None:
    op.create_table(
        "latest_predictions",
        sa.Column("model_name", sa.String(64), primary_key=True),
        sa.Column("asset_id", sa.String(128), primary_key=True),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("window_key", sa.String(128), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True)),
        sa.Column("window_end", sa.DateTime(timezone=True)),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("label", sa.String(32), nullable=False),
        sa.Column("produced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mlflow_run_id", sa.String(64)),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("details", sa.JSON),
    )
    # Fill it from what is stored already: the newest window per (model, asset), as the old query chose.
    op.execute(
        f"INSERT INTO latest_predictions ({COLUMNS}) SELECT {COLUMNS} FROM ("
        f"SELECT {COLUMNS}, row_number() OVER (PARTITION BY model_name, asset_id "
        "ORDER BY window_start DESC, produced_at DESC, id DESC) AS newest FROM predictions) ranked WHERE newest = 1"
    )


def downgrade() -> None:
    op.drop_table("latest_predictions")
