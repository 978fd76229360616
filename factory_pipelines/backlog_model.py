"""The shift backlog contract: the evidence a backlog is written from, its tasks, and who wrote it.

A backlog is written at a shift's start from the evidence known then (predictions, open alerts,
telemetry excursions). Every task points back at evidence ids, so an operations lead can open the
prediction or alert behind it; the evidence travels with the backlog for that reason. The JSON
schema Gemini answers against (`TaskDraft`, `BacklogDraft`) is derived from the same models.
"""

from __future__ import annotations

from datetime import UTC
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, computed_field

from factory_pipelines.shifts import Shift


class EvidenceKind(StrEnum):
    RUL = "rul"
    ALERT = "alert"
    ENERGY_ANOMALY = "energy_anomaly"
    CYBER_ANOMALY = "cyber_anomaly"
    PPE_COMPLIANCE = "ppe_compliance"
    SAFETY_HAZARD = "safety_hazard"
    CLEANROOM_EXCURSION = "cleanroom_excursion"


class EvidenceItem(BaseModel):
    """One fact a task may rest on. `evidence_id` is a prediction id, an alert id or a telemetry window reference."""

    model_config = ConfigDict(frozen=True)

    evidence_id: str
    kind: EvidenceKind
    asset_id: str = Field(description="Asset, zone or cleanroom the evidence is about.")
    observed_at: AwareDatetime
    summary: str = Field(description="One line a person can read.")
    facts: dict[str, Any] = Field(default_factory=dict, description="The numbers behind the summary.")
    related_ids: list[str] = Field(
        default_factory=list, description="Further prediction or alert ids folded into this item."
    )


class ShiftEvidence(BaseModel):
    """Everything known at the shift's start that a backlog may act on."""

    shift: Shift
    next_shifts: list[Shift] = Field(description="The shifts the RUL horizon covers, after this one.")
    gathered_at: AwareDatetime
    items: list[EvidenceItem]
    notes: list[str] = Field(default_factory=list, description="What could not be read, and why.")

    @property
    def ids(self) -> set[str]:
        return {item.evidence_id for item in self.items} | {rid for item in self.items for rid in item.related_ids}

    @property
    def assets(self) -> set[str]:
        return {item.asset_id for item in self.items}


class BacklogTask(BaseModel):
    task_id: str
    asset_id: str
    action: str = Field(description="Action code, e.g. SCHEDULE_MAINTENANCE_NEXT_SHIFT (the planner's codes).")
    title: str = Field(description="What to do, in one line.")
    priority_score: float = Field(ge=0, le=100, description="Higher first.")
    priority_reasons: list[str] = Field(min_length=1, description="Why the task ranks where it does.")
    due_at: AwareDatetime
    estimated_minutes: int = Field(gt=0, le=24 * 60)
    required_skill: str
    evidence_ids: list[str] = Field(min_length=1, description="Prediction and alert ids behind the task.")


WriterName = Literal["deterministic", "gemini"]


class WriterInfo(BaseModel):
    """Which writer produced a backlog; for Gemini also the model and what it cost."""

    name: WriterName
    model: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    fallback_reason: str | None = Field(None, description="Why Gemini's answer was not used, when it was not.")
    dropped_tasks: list[str] = Field(
        default_factory=list, description="Gemini tasks dropped because they named unknown assets or evidence."
    )


class Backlog(BaseModel):
    shift: Shift
    summary: str
    tasks: list[BacklogTask] = Field(description="Highest priority first.")
    generated_at: AwareDatetime
    writer: WriterInfo
    evidence: list[EvidenceItem]
    notes: list[str] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def backlog_id(self) -> str:
        return f"backlog-{self.shift.key}"


# ---- what Gemini answers: the tasks without the ids we assign ----


class TaskDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")

    asset_id: str
    action: str = Field(min_length=1, max_length=64)
    title: str = Field(min_length=1, max_length=300)
    priority_score: float = Field(ge=0, le=100)
    priority_reasons: list[str] = Field(min_length=1, max_length=6)
    due_at: AwareDatetime
    estimated_minutes: int = Field(gt=0, le=24 * 60)
    required_skill: str = Field(min_length=1, max_length=80)
    evidence_ids: list[str] = Field(min_length=1, max_length=20)


class BacklogDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")

    summary: str = Field(min_length=1, max_length=1200)
    tasks: list[TaskDraft] = Field(max_length=60)


def legacy_backlog_payload(backlog: Backlog) -> dict[str, Any]:
    """The earlier backlog agent's shape (SEED-CLIENTS.md): `events` are our tasks; times in UTC, as it sent them."""
    start, end = backlog.shift.start.astimezone(UTC).isoformat(), backlog.shift.end.astimezone(UTC).isoformat()
    return {
        "backlog_id": backlog.backlog_id,
        "generated_at": backlog.generated_at.astimezone(UTC).isoformat(),
        "shift_start": start,
        "shift_period": {"start": start, "end": end},
        "events_count": len(backlog.tasks),
        "total_events": len(backlog.tasks),
        "events": [task.model_dump(mode="json") for task in backlog.tasks],
    }


def task_id(shift: Shift, index: int) -> str:
    return f"{shift.key}#{index:02d}"


def backlog_markdown(backlog: Backlog) -> str:
    """The backlog as Markdown, for people (Accept: text/markdown, the command line)."""
    shift = backlog.shift
    lines = [
        f"# Shift backlog: {shift.name}, {shift.start:%Y-%m-%d %H:%M} to {shift.end:%H:%M} ({shift.timezone})",
        "",
        backlog.summary,
        "",
    ]
    if backlog.tasks:
        lines += [
            "| # | priority | asset | task | due | est. | skill | evidence |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for number, task in enumerate(backlog.tasks, start=1):
            due = task.due_at.astimezone(shift.start.tzinfo)
            lines.append(
                f"| {number} | {task.priority_score:.0f} | {task.asset_id} | {_cell(task.title)} (`{task.action}`) "
                f"| {due:%a %H:%M} | {task.estimated_minutes} min | {_cell(task.required_skill)} "
                f"| {', '.join(f'`{e}`' for e in task.evidence_ids)} |"
            )
        lines += ["", "## Why"]
        for number, task in enumerate(backlog.tasks, start=1):
            lines.append(f"{number}. {task.asset_id}: {'; '.join(task.priority_reasons)}")
    else:
        lines.append("No tasks: nothing in the evidence needs action this shift.")
    writer = backlog.writer
    written = f"Written by {writer.name}" + (f" ({writer.model})" if writer.model else "")
    if writer.fallback_reason:
        written += f" (Gemini not used: {writer.fallback_reason})"
    lines += [
        "",
        f"_{written}, {backlog.generated_at:%Y-%m-%d %H:%M %Z}, from {len(backlog.evidence)} evidence items._",
    ]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


__all__ = [
    "Backlog",
    "BacklogDraft",
    "BacklogTask",
    "EvidenceItem",
    "EvidenceKind",
    "ShiftEvidence",
    "TaskDraft",
    "WriterInfo",
    "backlog_markdown",
    "legacy_backlog_payload",
    "task_id",
]
