"""The deterministic backlog writer: evidence in, a ranked task list out, the same every time.

Each evidence item drafts a task with a priority score (0-100) built from named parts, so every
score comes with its reasons: a base for the kind of evidence, then urgency (how soon an RUL
interval runs out, an alert's severity and plan priority, the share of windows flagged). Drafts
about the same asset and the same concern (an open RUL_LOW alert and the RUL prediction behind
it) fold into one task that cites both. Gemini, when configured, starts from this backlog; it is
also what every failure of Gemini falls back to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from factory_pipelines.backlog_model import (
    Backlog,
    BacklogTask,
    EvidenceItem,
    EvidenceKind,
    ShiftEvidence,
    WriterInfo,
    task_id,
)
from factory_pipelines.planner import template_for
from factory_pipelines.shifts import Shift
from factory_pipelines.telemetry import Severity, utc_now

URGENT_SCORE = 70.0
CORROBORATION_BONUS = 5.0  # per further item about the same concern, up to two
DEFAULT_MINUTES = 45

# Minutes a task of each action takes on the floor (planner codes and the backlog's own).
ESTIMATED_MINUTES: dict[str, int] = {
    "STOP_MACHINE_IMMEDIATE": 20,
    "ISOLATE_NETWORK_SEGMENT": 60,
    "SCHEDULE_MAINTENANCE_NEXT_SHIFT": 120,
    "ADJUST_POWER_PROFILE": 45,
    "EVACUATE_ZONE": 30,
    "INSPECT_NETWORK_TRAFFIC": 60,
    "INSPECT_ASSET": 45,
    "REDUCE_LOAD_AND_COOL": 30,
    "CONTAIN_CLEANROOM_EXCURSION": 60,
    "INSPECT_POWER_DRAW": 45,
    "LOG_ONLY": 10,
    "INVESTIGATE_NOW": 30,
    "REPLACE_BEARING": 120,
    "BRIEF_ZONE_ON_PPE": 20,
    "REVIEW_ZONE_HAZARD": 45,
}

# The concern each alert type or evidence kind is about: drafts with the same asset and concern fold.
_CONCERN_BY_ALERT_TYPE = {
    "RUL_LOW": "maintenance",
    "ENERGY_ANOMALY": "energy",
    "ENERGY_OPTIMIZATION": "energy",
    "CYBER_ANOMALY": "cyber",
    "DDoS_RISK": "cyber",
    "PPE_VIOLATION": "ppe",
    "SAFETY_HAZARD": "safety",
    "CLEANROOM_EXCURSION": "cleanroom",
}
_CONCERN_BY_KIND = {
    EvidenceKind.RUL: "maintenance",
    EvidenceKind.ENERGY_ANOMALY: "energy",
    EvidenceKind.CYBER_ANOMALY: "cyber",
    EvidenceKind.PPE_COMPLIANCE: "ppe",
    EvidenceKind.SAFETY_HAZARD: "safety",
    EvidenceKind.CLEANROOM_EXCURSION: "cleanroom",
}


class BacklogRefiner(Protocol):
    """A writer that starts from the deterministic backlog (Gemini); it returns that backlog on any failure."""

    def write(self, evidence: ShiftEvidence, fallback: Backlog) -> Backlog: ...


def write_backlog(
    evidence: ShiftEvidence,
    *,
    refiner: BacklogRefiner | None = None,
    max_tasks: int = 40,
    now: datetime | None = None,
) -> Backlog:
    """The shift's backlog: the deterministic one, refined by `refiner` when one is given."""
    deterministic = write_deterministic(evidence, max_tasks=max_tasks, now=now)
    return refiner.write(evidence, deterministic) if refiner is not None else deterministic


@dataclass
class TaskProposal:
    """A task before ranking: score parts are kept apart so the reasons can name them."""

    asset_id: str
    concern: str
    action: str
    title: str
    skill: str
    due_at: datetime
    evidence_ids: list[str]
    parts: list[tuple[float, str]] = field(default_factory=list)

    @property
    def score(self) -> float:
        return max(0.0, min(100.0, sum(points for points, _ in self.parts)))


def write_deterministic(evidence: ShiftEvidence, *, max_tasks: int = 40, now: datetime | None = None) -> Backlog:
    """The backlog for `evidence`'s shift, ranked by priority score (ties: earlier due, then asset)."""
    shift = evidence.shift
    drafts = [draft for item in evidence.items if (draft := draft_task(item, evidence)) is not None]
    ranked = sorted(_fold(drafts), key=lambda d: (-d.score, d.due_at, d.asset_id, d.action))[:max_tasks]
    tasks = [
        BacklogTask(
            task_id=task_id(shift, number),
            asset_id=draft.asset_id,
            action=draft.action,
            title=draft.title,
            priority_score=round(draft.score, 1),
            priority_reasons=[
                f"{reason} (+{points:g})" if points >= 0 else f"{reason} ({points:g})" for points, reason in draft.parts
            ],
            due_at=draft.due_at.astimezone(shift.start.tzinfo),
            estimated_minutes=ESTIMATED_MINUTES.get(draft.action, DEFAULT_MINUTES),
            required_skill=draft.skill,
            evidence_ids=draft.evidence_ids,
        )
        for number, draft in enumerate(ranked, start=1)
    ]
    return Backlog(
        shift=shift,
        summary=shift_summary(evidence, tasks),
        tasks=tasks,
        generated_at=now or utc_now(),
        writer=WriterInfo(name="deterministic"),
        evidence=evidence.items,
        notes=evidence.notes,
    )


def draft_task(item: EvidenceItem, evidence: ShiftEvidence) -> TaskProposal | None:
    """The task one evidence item calls for, or None when it needs no action (e.g. a compliant zone)."""
    return _DRAFTERS[item.kind](item, evidence.shift)


# ---- one drafter per kind of evidence ------------------------------------------------------


def _alert_task(item: EvidenceItem, shift: Shift) -> TaskProposal:
    facts = item.facts
    severity = Severity(facts["severity"])
    template = template_for(facts["type"], severity)
    plan_priority = int(facts.get("plan_priority", template.priority))
    base = {Severity.CRITICAL: 60.0, Severity.WARNING: 40.0, Severity.INFO: 15.0}[severity]
    parts = [
        (base, f"open {severity.value} alert {facts['type']}"),
        ((5 - plan_priority) * 5.0, f"plan priority {plan_priority} of 5"),
    ]
    if not facts.get("acknowledged"):
        parts.append((5.0, "nobody has acknowledged it"))
    if int(facts.get("count", 1)) > 1:
        parts.append((min(10.0, float(facts["count"])), f"seen {facts['count']} times"))
    due = _at_least(_parse(facts.get("plan_due_at")) or shift.start + template.due_in, shift.start)
    return TaskProposal(
        asset_id=item.asset_id,
        concern=_CONCERN_BY_ALERT_TYPE.get(facts["type"], f"alert:{item.evidence_id}"),
        action=str(facts.get("plan_action", template.action)),
        title=str(facts.get("plan_summary") or item.summary),
        skill=str(facts.get("plan_owner_role", template.owner_role)),
        due_at=due,
        evidence_ids=[item.evidence_id, *item.related_ids],
        parts=parts,
    )


def _rul_task(item: EvidenceItem, shift: Shift) -> TaskProposal:
    lower_at = _parse(item.facts.get("lower_end_reached_at"))
    parts: list[tuple[float, str]] = [(40.0, "RUL interval reaches into the planning horizon")]
    # Replace within this shift when the interval runs out in it; otherwise book it, during this shift.
    action, due = "SCHEDULE_MAINTENANCE_NEXT_SHIFT", shift.end
    if lower_at is None:
        parts.append((15.0, "model labels the remaining life low; cycle rate unknown"))
    elif lower_at <= shift.start:
        parts.append((45.0, "interval's lower end already passed"))
        action, due = "REPLACE_BEARING", shift.start + timedelta(hours=1)
    elif lower_at <= shift.end:
        parts.append((35.0, f"lower end reached this shift ({_clock(lower_at, shift)})"))
        action, due = "REPLACE_BEARING", lower_at
    else:
        hours = (lower_at - shift.end).total_seconds() / 3600
        parts.append((max(5.0, 25.0 - hours), f"lower end reached {hours:.0f} h after this shift"))
    return TaskProposal(
        asset_id=item.asset_id,
        concern="maintenance",
        action=action,
        title=f"Plan the bearing change of {item.asset_id} before its predicted life runs out",
        skill="maintenance technician",
        due_at=due,
        evidence_ids=[item.evidence_id],
        parts=parts,
    )


@dataclass(frozen=True)
class FlaggedWindowsTask:
    """The task for evidence that counts flagged windows: a base score plus the share of windows flagged."""

    concern: str
    action: str
    title: str  # str.format over {asset}
    skill: str
    due_in: timedelta | None  # after the shift's start; None: by the shift's end
    base: float
    what: str
    weight: float


FLAGGED_WINDOWS_TASKS: dict[EvidenceKind, FlaggedWindowsTask] = {
    EvidenceKind.ENERGY_ANOMALY: FlaggedWindowsTask(
        "energy", "INSPECT_POWER_DRAW", "Check the unusual power draw of {asset}", "electrician",
        None, 25.0, "power-consumption anomalies", 20.0,
    ),
    EvidenceKind.CYBER_ANOMALY: FlaggedWindowsTask(
        "cyber", "INSPECT_NETWORK_TRAFFIC", "Inspect the network traffic of {asset}", "OT security engineer",
        timedelta(hours=1), 45.0, "attack or network anomaly", 25.0,
    ),
    EvidenceKind.SAFETY_HAZARD: FlaggedWindowsTask(
        "safety", "REVIEW_ZONE_HAZARD", "Walk zone {asset} with the safety officer and remove the hazard's cause",
        "shift safety officer", timedelta(hours=1), 55.0, "high hazard risk in the zone", 25.0,
    ),
}  # fmt: skip


def _proposal(
    item: EvidenceItem, shift: Shift, concern: str, action: str, title: str, skill: str, due_in: timedelta | None,
    parts: list[tuple[float, str]],
) -> TaskProposal:  # fmt: skip
    return TaskProposal(
        asset_id=item.asset_id,
        concern=concern,
        action=action,
        title=title,
        skill=skill,
        due_at=shift.end if due_in is None else shift.start + due_in,
        evidence_ids=[item.evidence_id, *item.related_ids],
        parts=parts,
    )


def _flagged_windows_task(item: EvidenceItem, shift: Shift) -> TaskProposal:
    spec = FLAGGED_WINDOWS_TASKS[item.kind]
    flagged, scored = int(item.facts.get("flagged_windows", 1)), max(1, int(item.facts.get("scored_windows", 1)))
    parts = [
        (spec.base, spec.what),
        (round(spec.weight * flagged / scored, 1), f"{flagged} of {scored} windows flagged last shift"),
    ]
    attack = item.facts.get("attack_type")
    if attack and attack != "normal":
        parts.append((5.0, f"classified as {attack}"))
    title = spec.title.format(asset=item.asset_id)
    return _proposal(item, shift, spec.concern, spec.action, title, spec.skill, spec.due_in, parts)


def _ppe_task(item: EvidenceItem, shift: Shift) -> TaskProposal | None:
    compliance, target = float(item.facts["compliance"]), float(item.facts["target"])
    if compliance >= target:
        return None
    gap = target - compliance
    parts = [
        (35.0, f"PPE compliance {compliance:.0%} below the {target:.0%} target"),
        (round(min(40.0, gap * 100), 1), f"{gap:.0%} short of the target"),
    ]
    title = f"Brief the crew of zone {item.asset_id} on hard hats and vests and check spares at the entrance"
    return _proposal(item, shift, "ppe", "BRIEF_ZONE_ON_PPE", title, "shift safety officer", timedelta(hours=1), parts)


def _cleanroom_task(item: EvidenceItem, shift: Shift) -> TaskProposal:
    out, total = int(item.facts["readings_out_of_limits"]), max(1, int(item.facts["readings"]))
    parts = [
        (50.0, f"cleanroom out of limits ({', '.join(item.facts.get('limits_broken', []))})"),
        (round(min(20.0, 40.0 * out / total), 1), f"{out} of {total} readings last shift"),
    ]
    title = f"Find the cause of the excursion in {item.asset_id} and review the lots made during it"
    action, skill = "CONTAIN_CLEANROOM_EXCURSION", "cleanroom supervisor"
    return _proposal(item, shift, "cleanroom", action, title, skill, timedelta(minutes=30), parts)


_DRAFTERS: dict[EvidenceKind, Callable[[EvidenceItem, Shift], TaskProposal | None]] = {
    EvidenceKind.ALERT: _alert_task,
    EvidenceKind.RUL: _rul_task,
    EvidenceKind.ENERGY_ANOMALY: _flagged_windows_task,
    EvidenceKind.CYBER_ANOMALY: _flagged_windows_task,
    EvidenceKind.SAFETY_HAZARD: _flagged_windows_task,
    EvidenceKind.PPE_COMPLIANCE: _ppe_task,
    EvidenceKind.CLEANROOM_EXCURSION: _cleanroom_task,
}


def _fold(drafts: list[TaskProposal]) -> list[TaskProposal]:
    """One task per (asset, concern): the highest-scoring draft, citing the others' evidence too."""
    groups: dict[tuple[str, str], list[TaskProposal]] = {}
    for draft in drafts:
        groups.setdefault((draft.asset_id, draft.concern), []).append(draft)
    folded = []
    for group in groups.values():
        group.sort(key=lambda d: (-d.score, d.due_at))
        lead, others = group[0], group[1:]
        for other in others:
            lead.evidence_ids += [e for e in other.evidence_ids if e not in lead.evidence_ids]
            lead.due_at = min(lead.due_at, other.due_at)
        if others:
            lead.parts.append((CORROBORATION_BONUS * min(2, len(others)), f"{len(others)} more evidence items agree"))
        folded.append(lead)
    return folded


# ---- the summary ---------------------------------------------------------------------------


def shift_summary(evidence: ShiftEvidence, tasks: list[BacklogTask]) -> str:
    shift = evidence.shift
    head = f"{shift.name.capitalize()} shift {shift.start:%a %d %b %H:%M}-{shift.end:%H:%M} ({shift.timezone}): "
    if not tasks:
        head += "no tasks; nothing in the evidence needs action."
    else:
        urgent = sum(task.priority_score >= URGENT_SCORE for task in tasks)
        top = tasks[0]
        head += (
            f"{len(tasks)} tasks, {urgent} urgent. First: {top.title} ({top.asset_id}, score {top.priority_score:.0f})."
        )
    counts = _kind_counts(evidence.items)
    facts = []
    if counts.get(EvidenceKind.ALERT):
        critical = sum(
            1 for i in evidence.items if i.kind == EvidenceKind.ALERT and i.facts.get("severity") == "CRITICAL"
        )
        facts.append(f"{counts[EvidenceKind.ALERT]} open alerts ({critical} critical)")
    if counts.get(EvidenceKind.RUL):
        facts.append(f"{counts[EvidenceKind.RUL]} robots whose RUL interval ends within the horizon")
    for kind, label in (
        (EvidenceKind.ENERGY_ANOMALY, "assets with energy anomalies"),
        (EvidenceKind.CYBER_ANOMALY, "assets with cyber anomalies"),
        (EvidenceKind.SAFETY_HAZARD, "zones with high hazard risk"),
        (EvidenceKind.CLEANROOM_EXCURSION, "cleanroom excursions"),
    ):
        if counts.get(kind):
            facts.append(f"{counts[kind]} {label}")
    zones = [i for i in evidence.items if i.kind == EvidenceKind.PPE_COMPLIANCE]
    if zones:
        facts.append("PPE compliance " + ", ".join(f"{z.asset_id} {float(z.facts['compliance']):.0%}" for z in zones))
    if evidence.notes:
        facts.append(f"{len(evidence.notes)} sources unreadable (see notes)")
    return head + (" Evidence: " + "; ".join(facts) + "." if facts else "")


def _kind_counts(items: list[EvidenceItem]) -> dict[EvidenceKind, int]:
    counts: dict[EvidenceKind, int] = {}
    for item in items:
        counts[item.kind] = counts.get(item.kind, 0) + 1
    return counts


def _parse(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _at_least(moment: datetime, floor: datetime) -> datetime:
    return max(moment, floor)


def _clock(moment: datetime, shift: Shift) -> str:
    return f"{moment.astimezone(shift.start.tzinfo):%H:%M}"
