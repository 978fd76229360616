"""alerts, alert_events, alert_notifications: the alert lifecycle, its history and its texts

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.String(40), primary_key=True),
        sa.Column("dedup_key", sa.String(512), nullable=False),
        sa.Column("open_key", sa.String(512)),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("level", sa.String(32)),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("asset_id", sa.String(128)),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
        sa.Column("acknowledged_by", sa.String(200)),
        sa.Column("ack_comment", sa.Text),
        sa.Column("cleared_at", sa.DateTime(timezone=True)),
        sa.Column("cleared_by", sa.String(200)),
        sa.Column("clear_comment", sa.Text),
        sa.Column("cooldown_s", sa.Float, nullable=False),
        sa.Column("auto_clear_s", sa.Float),
        sa.Column("auto_clear_at", sa.DateTime(timezone=True)),
        sa.Column("escalation_stage", sa.Integer, nullable=False),
        sa.Column("lineage", sa.JSON),
        sa.Column("evidence", sa.JSON),
        sa.Column("plan", sa.JSON),
        sa.Column("planned_at", sa.DateTime(timezone=True)),
        # One open alert per dedup key: open_key is the key while open and NULL once cleared.
        sa.UniqueConstraint("open_key", name="uq_alerts_open_key"),
    )
    op.create_index("ix_alerts_dedup_cleared", "alerts", ["dedup_key", "cleared_at"])
    op.create_index("ix_alerts_last_seen", "alerts", ["last_seen"])

    op.create_table(
        "alert_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.String(40), sa.ForeignKey("alerts.alert_id"), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200)),
        sa.Column("comment", sa.Text),
        sa.Column("details", sa.JSON),
    )
    op.create_index("ix_alert_events_alert", "alert_events", ["alert_id", "id"])

    op.create_table(
        "alert_notifications",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.String(40), sa.ForeignKey("alerts.alert_id"), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("recipient", sa.String(64), nullable=False),
        sa.Column("stage", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("provider_id", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True)),
        # One text per alert, channel, number and escalation stage, whichever process sends it.
        sa.UniqueConstraint("alert_id", "channel", "recipient", "stage", name="uq_alert_notification"),
    )
    op.create_index("ix_alert_notifications_recipient", "alert_notifications", ["recipient", "created_at"])


def downgrade() -> None:
    op.drop_table("alert_notifications")
    op.drop_table("alert_events")
    op.drop_table("alerts")
