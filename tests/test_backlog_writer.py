"""The deterministic backlog writer's ranking on a fixed evidence set."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from factory_pipelines.backlog_model import Backlog, EvidenceItem, EvidenceKind, ShiftEvidence, backlog_markdown
from factory_pipelines.backlog_writer import write_backlog, write_deterministic
from factory_pipelines.shifts import ShiftCalendar

CALENDAR = ShiftCalendar(timezone="Europe/Berlin")
SHIFT = CALENDAR.shift_for_key("2026-11-26T06:00+0100")
AT = SHIFT.start - timedelta(minutes=5)
NOW = SHIFT.start + timedelta(seconds=30)


def item(
    kind: EvidenceKind, evidence_id: str, asset_id: str, related: list[str] | None = None, **facts: Any
) -> EvidenceItem:
    return EvidenceItem(
        evidence_id=evidence_id,
        kind=kind,
        asset_id=asset_id,
        observed_at=AT,
        summary=f"{kind.value} on {asset_id}",
        facts=facts,
        related_ids=related or [],
    )


def alert_facts(alert_type: str, severity: str, *, priority: int, acknowledged: bool, count: int = 1) -> dict[str, Any]:
    return {
        "type": alert_type,
        "severity": severity,
        "source": "test",
        "count": count,
        "acknowledged": acknowledged,
        "plan_priority": priority,
    }


EVIDENCE_ITEMS = [
    item(
        EvidenceKind.ALERT,
        "al-ppe",
        "line-2",
        **alert_facts("PPE_VIOLATION", "CRITICAL", priority=1, acknowledged=False),
        plan_action="STOP_MACHINE_IMMEDIATE",
        plan_owner_role="line supervisor",
        plan_due_at=(SHIFT.start - timedelta(hours=1)).isoformat(),
        plan_summary="Stop line-2 now: worker without hard hat",
    ),
    item(
        EvidenceKind.ALERT,
        "al-rul",
        "robot-3",
        ["rul_lstm/w0/robot-3"],
        **alert_facts("RUL_LOW", "WARNING", priority=3, acknowledged=True, count=3),
    ),
    item(
        EvidenceKind.RUL,
        "rul_lstm/w1/robot-3",
        "robot-3",
        lower_end_reached_at=(SHIFT.start + timedelta(hours=5)).isoformat(),
    ),
    item(
        EvidenceKind.RUL,
        "rul_lstm/w1/robot-9",
        "robot-9",
        lower_end_reached_at=(SHIFT.end + timedelta(hours=30)).isoformat(),
    ),
    item(
        EvidenceKind.CLEANROOM_EXCURSION,
        "cleanrooms/w7/cleanroom-main",
        "cleanroom-main",
        readings_out_of_limits=12,
        readings=60,
        limits_broken=["iso_class"],
    ),
    item(EvidenceKind.SAFETY_HAZARD, "safety_hazard/w5/station-c", "zone-c", flagged_windows=6, scored_windows=60),
    item(
        EvidenceKind.CYBER_ANOMALY,
        "cyber_detector/w3/plc-4",
        "plc-4",
        flagged_windows=3,
        scored_windows=60,
        attack_type="ddos",
    ),
    item(
        EvidenceKind.ENERGY_ANOMALY,
        "energy_iforest/w2/press-1",
        "press-1",
        ["energy_iforest/w4/press-1"],
        flagged_windows=10,
        scored_windows=60,
    ),
    item(EvidenceKind.PPE_COMPLIANCE, "ppe_vision/w6/cam-a", "zone-a", compliance=0.90, target=0.95),
    item(EvidenceKind.PPE_COMPLIANCE, "ppe_vision/w6/cam-b", "zone-b", compliance=0.99, target=0.95),
]


@pytest.fixture
def evidence() -> ShiftEvidence:
    return ShiftEvidence(shift=SHIFT, next_shifts=CALENDAR.following(SHIFT, 3), gathered_at=NOW, items=EVIDENCE_ITEMS)


def test_ranking_on_a_fixed_evidence_set(evidence: ShiftEvidence) -> None:
    backlog = write_deterministic(evidence, now=NOW)
    ranked = [(task.asset_id, task.priority_score) for task in backlog.tasks]
    assert ranked == [
        ("line-2", 85.0),  # critical, plan priority 1, unacknowledged: 60 + 20 + 5
        ("robot-3", 80.0),  # lower end reached this shift (40 + 35), and an open RUL_LOW alert agrees (+5)
        ("cleanroom-main", 58.0),  # 50 + 40 * 12/60
        ("zone-c", 57.5),  # 55 + 25 * 6/60
        ("plc-4", 51.2),  # 45 + 25 * 3/60 + 5 for a classified attack
        ("robot-9", 45.0),  # lower end 30 h after this shift: 40 + the floor of 5
        ("zone-a", 40.0),  # 35 + 5 points short of the target
        ("press-1", 28.3),  # 25 + 20 * 10/60
    ]
    assert [task.task_id for task in backlog.tasks] == [f"2026-11-26T06:00+0100#{n:02d}" for n in range(1, 9)]
    assert "zone-b" not in {task.asset_id for task in backlog.tasks}  # compliant: evidence, but no task


def test_tasks_carry_reasons_evidence_due_times_and_skills(evidence: ShiftEvidence) -> None:
    tasks = {task.asset_id: task for task in write_deterministic(evidence, now=NOW).tasks}
    robot = tasks["robot-3"]
    assert robot.evidence_ids == ["rul_lstm/w1/robot-3", "al-rul", "rul_lstm/w0/robot-3"]
    assert robot.action == "REPLACE_BEARING" and robot.required_skill == "maintenance technician"
    assert robot.due_at == SHIFT.start + timedelta(hours=5) and robot.estimated_minutes == 120
    assert any("lower end reached this shift (11:00)" in reason for reason in robot.priority_reasons)
    assert any("1 more evidence items agree (+5)" in reason for reason in robot.priority_reasons)

    stop = tasks["line-2"]
    assert (stop.action, stop.required_skill, stop.evidence_ids) == (
        "STOP_MACHINE_IMMEDIATE",
        "line supervisor",
        ["al-ppe"],
    )
    assert stop.due_at == SHIFT.start  # the plan was due before the shift: due at its start
    assert stop.priority_reasons == [
        "open CRITICAL alert PPE_VIOLATION (+60)",
        "plan priority 1 of 5 (+20)",
        "nobody has acknowledged it (+5)",
    ]
    assert tasks["robot-9"].action == "SCHEDULE_MAINTENANCE_NEXT_SHIFT" and tasks["robot-9"].due_at == SHIFT.end
    assert tasks["press-1"].evidence_ids == ["energy_iforest/w2/press-1", "energy_iforest/w4/press-1"]
    assert all(task.due_at.utcoffset() == timedelta(hours=1) for task in tasks.values())  # shown in plant time


def test_the_writer_is_deterministic_and_summarizes(evidence: ShiftEvidence) -> None:
    first, second = write_deterministic(evidence, now=NOW), write_deterministic(evidence, now=NOW)
    assert first == second
    assert first.writer.name == "deterministic" and first.evidence == EVIDENCE_ITEMS
    summary = first.summary
    assert summary.startswith("Early shift Thu 26 Nov 06:00-14:00 (Europe/Berlin): 8 tasks, 2 urgent.")
    assert "2 open alerts (1 critical)" in summary and "PPE compliance zone-a 90%, zone-b 99%" in summary
    assert len(write_deterministic(evidence, max_tasks=3, now=NOW).tasks) == 3


def test_no_evidence_no_tasks() -> None:
    empty = ShiftEvidence(shift=SHIFT, next_shifts=[], gathered_at=NOW, items=[], notes=["open alerts not read: x"])
    backlog = write_deterministic(empty, now=NOW)
    assert backlog.tasks == [] and "no tasks" in backlog.summary and "1 sources unreadable" in backlog.summary
    assert "No tasks" in backlog_markdown(backlog)


def test_markdown_lists_tasks_in_order_with_their_evidence(evidence: ShiftEvidence) -> None:
    text = backlog_markdown(write_deterministic(evidence, now=NOW))
    assert text.startswith("# Shift backlog: early, 2026-11-26 06:00 to 14:00 (Europe/Berlin)")
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 8 and "| 1 | 85 | line-2 |" in rows[0] and "`al-ppe`" in rows[0]
    assert "Written by deterministic" in text


def test_a_refiner_gets_the_deterministic_backlog(evidence: ShiftEvidence) -> None:
    seen: list[Backlog] = []

    class Refiner:
        def write(self, evidence: ShiftEvidence, fallback: Backlog) -> Backlog:
            seen.append(fallback)
            return fallback.model_copy(update={"summary": "refined"})

    refined = write_backlog(evidence, refiner=Refiner(), now=NOW)
    assert refined.summary == "refined" and seen == [write_deterministic(evidence, now=NOW)]


def test_due_times_never_precede_the_shift() -> None:
    late_rul = item(
        EvidenceKind.RUL,
        "rul_lstm/w/robot-1",
        "robot-1",
        lower_end_reached_at=(SHIFT.start - timedelta(hours=2)).isoformat(),
    )
    backlog = write_deterministic(
        ShiftEvidence(shift=SHIFT, next_shifts=[], gathered_at=NOW, items=[late_rul]), now=NOW
    )
    [task] = backlog.tasks
    assert task.priority_score == 85 and "already passed" in task.priority_reasons[1]
    assert task.due_at == SHIFT.start + timedelta(hours=1)
    assert isinstance(task.due_at, datetime)
