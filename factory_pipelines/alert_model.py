"""The alert contract: what a rule raises, what the store keeps, what the planner and notifier add.

One module so that the rules, the alert book, the planner, the SMS notifier, the orchestrator job
and the REST API agree on one shape. The lifecycle is the one operators know from SCADA alarm
lists: an alert is active or cleared, and unacknowledged or acknowledged; while it is not cleared
it is *open*, and a repeat of the same dedup key updates it instead of raising another.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from factory_pipelines.telemetry import Severity, UtcDatetime

SEVERITY_RANK: dict[Severity, int] = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}

# The five levels the earlier agents sent (SEED-CLIENTS.md), compared case-insensitively.
# EMERGENCY is at least as severe as CRITICAL, so it is texted like CRITICAL.
LEGACY_LEVELS: dict[str, Severity] = {
    "NORMAL": Severity.INFO,
    "INFO": Severity.INFO,
    "CAUTION": Severity.WARNING,
    "WARNING": Severity.WARNING,
    "CRITICAL": Severity.CRITICAL,
    "EMERGENCY": Severity.CRITICAL,
}


def severity_of_level(level: str) -> Severity:
    """The platform severity of a level name, earlier agents' levels included; ValueError naming the known ones."""
    try:
        return LEGACY_LEVELS[level.strip().upper()]
    except KeyError:
        raise ValueError(f"unknown level {level!r}; known: {', '.join(LEGACY_LEVELS)}") from None


def more_severe(a: Severity, b: Severity) -> Severity:
    return a if SEVERITY_RANK[a] >= SEVERITY_RANK[b] else b


class AlertLineage(BaseModel):
    """Where an alert came from: enough to walk back to the data window and the model version."""

    window_key: str | None = None
    asset_key: str | None = Field(None, description="Dagster asset that produced the evidence, e.g. rul_predictions.")
    model_name: str | None = None
    model_version: str | None = None
    mlflow_run_id: str | None = Field(None, description="MLflow run that trained the model version.")
    dagster_run_id: str | None = Field(None, description="Dagster run that produced the prediction.")
    orchestrator_run_id: str | None = Field(None, description="Dagster run of the orchestrator job that raised it.")
    prediction_id: str | None = Field(None, description="The prediction's id: model/window_key/asset_id.")


class AlertCandidate(BaseModel):
    """What a rule (or `POST /alert`) proposes; the alert book turns it into a new or updated alert."""

    rule: str = Field(description="Rule name, or 'external' for POST /alert.")
    type: str = Field(description="Alert type, e.g. RUL_LOW, PPE_VIOLATION, DDoS_RISK, ENERGY_OPTIMIZATION.")
    severity: Severity
    level: str | None = Field(None, description="The level as sent by an external agent (e.g. EMERGENCY).")
    source: str = Field(description="Model name, telemetry kind or external agent that raised it.")
    asset_id: str | None = None
    message: str
    dedup_key: str = Field(description="Open alerts are unique per key; a repeat updates the open one.")
    cooldown_s: float = Field(0.0, ge=0, description="A recurrence this soon after clearing reopens the alert.")
    auto_clear_s: float | None = Field(None, gt=0, description="Cleared by itself when not seen again this long.")
    observed_at: UtcDatetime
    lineage: AlertLineage = Field(default_factory=AlertLineage)
    evidence: dict[str, Any] = Field(default_factory=dict, description="Score, threshold, values that broke the rule.")


class AlertState(StrEnum):
    ACTIVE_UNACK = "ACTIVE_UNACK"
    ACTIVE_ACK = "ACTIVE_ACK"
    CLEARED_UNACK = "CLEARED_UNACK"
    CLEARED_ACK = "CLEARED_ACK"


class ActionPlan(BaseModel):
    """What to do about an alert. `action` keeps the earlier planner's codes for the earlier types."""

    action: str = Field(description="Action code, e.g. STOP_MACHINE_IMMEDIATE, SCHEDULE_MAINTENANCE_NEXT_SHIFT.")
    priority: int = Field(ge=1, le=5, description="1 is the most urgent.")
    summary: str
    steps: list[str]
    owner_role: str
    due_at: UtcDatetime
    parts_or_tools: list[str] = Field(default_factory=list)
    safety_notes: list[str] = Field(default_factory=list)
    written_by: str = Field("rules", description="'rules', or 'gemini:<model>' when an LLM refined the wording.")
    fallback_reason: str | None = Field(None, description="Why the LLM's wording was not used, if it was asked.")


class NotificationStatus(StrEnum):
    SENT = "sent"
    NOT_SENT = "not_sent"  # no credentials, rate limited, no recipients: recorded, never silently dropped
    FAILED = "failed"  # retries exhausted


class NotificationRecord(BaseModel):
    alert_id: str
    channel: str = "sms"
    recipient: str
    stage: int = Field(0, ge=0, description="Escalation stage: 0 first notice, 1.. escalations.")
    status: NotificationStatus
    detail: str = ""
    provider_id: str | None = Field(None, description="Twilio message SID when sent.")
    attempts: int = 0
    body: str = ""
    created_at: UtcDatetime


class AlertRecord(BaseModel):
    """An alert as the store keeps it; the REST API and the MQTT `Alert` payload derive from it."""

    model_config = ConfigDict(protected_namespaces=())

    alert_id: str
    dedup_key: str
    rule: str
    type: str
    severity: Severity
    level: str | None = None
    source: str
    asset_id: str | None = None
    message: str
    state: AlertState
    count: int = Field(1, ge=1, description="How many times the condition was seen while the alert was open.")
    first_seen: UtcDatetime
    last_seen: UtcDatetime
    acknowledged_at: UtcDatetime | None = None
    acknowledged_by: str | None = None
    ack_comment: str | None = None
    cleared_at: UtcDatetime | None = None
    cleared_by: str | None = None
    clear_comment: str | None = None
    cooldown_s: float = 0.0
    auto_clear_s: float | None = None
    escalation_stage: int = Field(0, ge=0, description="Stages already notified.")
    lineage: AlertLineage = Field(default_factory=AlertLineage)
    evidence: dict[str, Any] = Field(default_factory=dict)
    plan: ActionPlan | None = None

    @property
    def is_open(self) -> bool:
        return self.cleared_at is None

    @property
    def is_acknowledged(self) -> bool:
        return self.acknowledged_at is not None


def alert_state(*, cleared: bool, acknowledged: bool) -> AlertState:
    if cleared:
        return AlertState.CLEARED_ACK if acknowledged else AlertState.CLEARED_UNACK
    return AlertState.ACTIVE_ACK if acknowledged else AlertState.ACTIVE_UNACK


class RaiseOutcome(BaseModel):
    """What the alert book did with a candidate: a new alert, or a repeat counted on an open one."""

    alert: AlertRecord
    created: bool
    reopened: bool = Field(False, description="A recurrence inside the cooldown after clearing reopened it.")
    severity_raised: bool = Field(False, description="A repeat raised the open alert's severity.")
