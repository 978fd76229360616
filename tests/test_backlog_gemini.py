"""Gemini's shift backlog through the real google-genai client, against the loopback stand-in.

The evidence and the deterministic backlog are built by hand for one Berlin early shift, so each
test can say exactly which assets and evidence ids exist and what the fallback looks like.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from factory_pipelines.backlog_gemini import BACKLOG_DRAFT_SCHEMA, GeminiBacklogWriter
from factory_pipelines.backlog_model import (
    Backlog,
    BacklogTask,
    EvidenceItem,
    EvidenceKind,
    ShiftEvidence,
    WriterInfo,
)
from factory_pipelines.shifts import ShiftCalendar
from tests.gemini_standin import GeminiStandIn, Reply, answer_with

MODEL = "gemini-backlog-test"
API_KEY = "test-key-456"
CALENDAR = ShiftCalendar(timezone="Europe/Berlin")
SHIFT = CALENDAR.shift_for_key("2026-11-26T06:00+0100")
GATHERED = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)  # 06:00 in Berlin


def evidence_set() -> ShiftEvidence:
    return ShiftEvidence(
        shift=SHIFT,
        next_shifts=CALENDAR.following(SHIFT, 2),
        gathered_at=GATHERED,
        items=[
            EvidenceItem(
                evidence_id="rul-pred-0042",
                kind=EvidenceKind.RUL,
                asset_id="press-3",
                observed_at=GATHERED - timedelta(minutes=5),
                summary="press-3: 38 to 61 cycles of life left",
                facts={"rul_lower": 38.0, "rul_upper": 61.0},
                related_ids=["alert-0007"],
            ),
            EvidenceItem(
                evidence_id="alert-0011",
                kind=EvidenceKind.ALERT,
                asset_id="chiller-2",
                observed_at=GATHERED - timedelta(hours=1),
                summary="open WARNING ENERGY_ANOMALY on chiller-2",
                facts={"type": "ENERGY_ANOMALY", "severity": "WARNING"},
            ),
            EvidenceItem(
                evidence_id="ppe-zone-b-0500",
                kind=EvidenceKind.PPE_COMPLIANCE,
                asset_id="zone-b",
                observed_at=GATHERED - timedelta(minutes=10),
                summary="zone-b: 91% of frames compliant",
                facts={"compliance": 0.91},
            ),
        ],
        notes=["cyber scores unavailable: model not promoted"],
    )


def fallback_backlog(evidence: ShiftEvidence) -> Backlog:
    """What the deterministic writer would say for `evidence` (written by hand here)."""
    tasks = [
        BacklogTask(
            task_id=f"{SHIFT.key}#01",
            asset_id="press-3",
            action="SCHEDULE_MAINTENANCE_NEXT_SHIFT",
            title="Schedule maintenance of press-3",
            priority_score=72.0,
            priority_reasons=["RUL interval ends within the next shift (+72)"],
            due_at=SHIFT.end,
            estimated_minutes=120,
            required_skill="maintenance planner",
            evidence_ids=["rul-pred-0042", "alert-0007"],
        ),
        BacklogTask(
            task_id=f"{SHIFT.key}#02",
            asset_id="chiller-2",
            action="INSPECT_POWER_DRAW",
            title="Check the power draw of chiller-2",
            priority_score=40.0,
            priority_reasons=["open WARNING alert ENERGY_ANOMALY (+40)"],
            due_at=SHIFT.start + timedelta(hours=4),
            estimated_minutes=45,
            required_skill="electrician",
            evidence_ids=["alert-0011"],
        ),
    ]
    return Backlog(
        shift=SHIFT,
        summary="Two tasks: press-3 maintenance and chiller-2's power draw.",
        tasks=tasks,
        generated_at=GATHERED,
        writer=WriterInfo(name="deterministic"),
        evidence=evidence.items,
        notes=evidence.notes,
    )


def task_json(asset_id: str, score: float, evidence_ids: list[str], due_at: str, title: str = "") -> dict[str, Any]:
    return {
        "asset_id": asset_id,
        "action": "INSPECT_ASSET",
        "title": title or f"Look at {asset_id}",
        "priority_score": score,
        "priority_reasons": [f"evidence on {asset_id}"],
        "due_at": due_at,
        "estimated_minutes": 30,
        "required_skill": "maintenance technician",
        "evidence_ids": evidence_ids,
    }


def reply_json(summary: str, tasks: list[dict[str, Any]], **usage: int) -> Reply:
    return answer_with(json.dumps({"summary": summary, "tasks": tasks}), **usage)


def writer_for(gemini: GeminiStandIn, *, attempts: int = 2, timeout_s: float = 5.0) -> GeminiBacklogWriter:
    return GeminiBacklogWriter(API_KEY, model=MODEL, base_url=gemini.url, timeout_s=timeout_s, attempts=attempts)


def assert_fell_back(backlog: Backlog, fallback: Backlog) -> str:
    """The deterministic backlog unchanged apart from the reason; returns the reason."""
    assert backlog.writer.name == "deterministic"
    assert backlog.model_dump(exclude={"writer"}) == fallback.model_dump(exclude={"writer"})
    assert backlog.writer.fallback_reason
    return backlog.writer.fallback_reason


GOOD_TASKS = [
    task_json("chiller-2", 55, ["alert-0011"], "2026-11-26T08:00:00Z", "Check why chiller-2 draws more power"),
    task_json("press-3", 81.5, ["rul-pred-0042", "alert-0007"], "2026-11-26T12:30:00Z", "Book press-3's bearings"),
    task_json("zone-b", 30, ["ppe-zone-b-0500"], "2026-11-26T07:00:00+01:00", "Remind zone-b about vests"),
]


def test_the_request_carries_the_schema_and_the_evidence(gemini: GeminiStandIn) -> None:
    gemini.reply = lambda: reply_json("ok", GOOD_TASKS)
    evidence = evidence_set()
    writer_for(gemini).write(evidence, fallback_backlog(evidence))

    [request] = gemini.requests
    assert request.path == f"/v1beta/models/{MODEL}:generateContent"
    assert request.headers.get("x-goog-api-key") == API_KEY
    generation = request.body["generationConfig"]
    assert generation["responseMimeType"] == "application/json"
    schema = generation["responseJsonSchema"]
    assert schema == BACKLOG_DRAFT_SCHEMA
    assert "$ref" not in json.dumps(schema) and "$defs" not in json.dumps(schema)  # self-contained
    task_schema = schema["properties"]["tasks"]["items"]
    assert set(task_schema["required"]) >= {"asset_id", "evidence_ids", "due_at", "priority_score"}
    assert task_schema["properties"]["estimated_minutes"]["minimum"] == 1  # pydantic's gt=0, as Gemini reads it
    assert schema["required"] == ["summary", "tasks"] and schema["additionalProperties"] is False

    prompt = json.dumps(request.body["contents"])
    for evidence_id in ("rul-pred-0042", "alert-0007", "alert-0011", "ppe-zone-b-0500"):
        assert evidence_id in prompt
    assert SHIFT.key in prompt and "Europe/Berlin" in prompt
    assert "EVACUATE_ZONE" in prompt  # the planner's action codes are offered
    assert "Schedule maintenance of press-3" in prompt  # the deterministic draft is there to refine
    assert "evidence" in json.dumps(request.body["systemInstruction"])


def test_a_valid_answer_becomes_the_backlog(gemini: GeminiStandIn) -> None:
    gemini.reply = lambda: reply_json(
        "press-3 needs bearings soon.", GOOD_TASKS, prompt_tokens=812, output_tokens=230, total_tokens=1042
    )
    evidence = evidence_set()
    fallback = fallback_backlog(evidence)
    backlog = writer_for(gemini).write(evidence, fallback)

    assert backlog.writer == WriterInfo(
        name="gemini", model=MODEL, prompt_tokens=812, output_tokens=230, total_tokens=1042, dropped_tasks=[]
    )
    assert backlog.summary == "press-3 needs bearings soon."
    assert [task.asset_id for task in backlog.tasks] == ["press-3", "chiller-2", "zone-b"]  # highest score first
    assert [task.task_id for task in backlog.tasks] == [f"{SHIFT.key}#01", f"{SHIFT.key}#02", f"{SHIFT.key}#03"]
    assert backlog.tasks[0].priority_score == 81.5
    assert backlog.tasks[0].evidence_ids == ["rul-pred-0042", "alert-0007"]
    press_due = backlog.tasks[0].due_at
    assert press_due == datetime(2026, 11, 26, 12, 30, tzinfo=UTC)
    assert (press_due.hour, press_due.utcoffset()) == (13, timedelta(hours=1))  # in the shift's zone
    assert (backlog.shift, backlog.generated_at) == (SHIFT, fallback.generated_at)
    assert (backlog.evidence, backlog.notes) == (fallback.evidence, fallback.notes)


def test_tasks_with_unknown_assets_or_evidence_are_dropped_and_logged(
    gemini: GeminiStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    tasks = [
        task_json("press-99", 90, ["rul-pred-0042"], "2026-11-26T09:00:00Z", "Fix the imaginary press"),
        task_json("press-3", 80, ["rul-pred-0042"], "2026-11-26T09:00:00Z", "Book press-3's bearings"),
        task_json("chiller-2", 70, ["alert-0011", "alert-9999"], "2026-11-26T09:00:00Z", "Chase a ghost alert"),
    ]
    gemini.reply = lambda: reply_json("ok", tasks)
    evidence = evidence_set()
    with caplog.at_level(logging.WARNING, logger="factory_pipelines.backlog_gemini"):
        backlog = writer_for(gemini).write(evidence, fallback_backlog(evidence))

    assert backlog.writer.name == "gemini" and backlog.writer.fallback_reason is None
    assert [(task.task_id, task.asset_id) for task in backlog.tasks] == [(f"{SHIFT.key}#01", "press-3")]
    assert backlog.writer.dropped_tasks == ["Fix the imaginary press", "Chase a ghost alert"]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("press-99" in message and "Fix the imaginary press" in message for message in warnings)
    assert any("alert-9999" in message and "alert-0011" not in message for message in warnings)


def test_an_answer_with_only_unknown_tasks_falls_back(gemini: GeminiStandIn) -> None:
    tasks = [
        task_json("press-99", 90, ["rul-pred-0042"], "2026-11-26T09:00:00Z", "Fix the imaginary press"),
        task_json("press-3", 80, ["pred-made-up"], "2026-11-26T09:00:00Z", "Cite nothing real"),
    ]
    gemini.reply = lambda: reply_json("ok", tasks)
    evidence = evidence_set()
    fallback = fallback_backlog(evidence)
    backlog = writer_for(gemini).write(evidence, fallback)
    reason = assert_fell_back(backlog, fallback)
    assert "all 2" in reason
    assert backlog.writer.dropped_tasks == ["Fix the imaginary press", "Cite nothing real"]


def test_an_empty_task_list_falls_back_only_when_the_rules_found_work(gemini: GeminiStandIn) -> None:
    gemini.reply = lambda: reply_json("Nothing to do.", [])
    evidence = evidence_set()
    fallback = fallback_backlog(evidence)
    assert "no tasks" in assert_fell_back(writer_for(gemini).write(evidence, fallback), fallback)

    quiet = fallback.model_copy(update={"tasks": [], "summary": "Nothing needs action."})
    backlog = writer_for(gemini).write(evidence, quiet)
    assert (backlog.writer.name, backlog.summary, backlog.tasks) == ("gemini", "Nothing to do.", [])


@pytest.mark.parametrize(
    ("reply", "reason_part"),
    [
        pytest.param((200, b"{not json"), "", id="malformed-http-body"),
        pytest.param(answer_with("Here is your backlog: press-3 first."), "not JSON", id="text-not-json"),
        pytest.param(answer_with(json.dumps({"tasks": GOOD_TASKS})), "summary", id="no-summary"),
        pytest.param(
            answer_with(json.dumps({"summary": "ok", "tasks": GOOD_TASKS, "confidence": 0.9})),
            "confidence",
            id="extra-field",
        ),
        pytest.param(
            reply_json("ok", [{**GOOD_TASKS[0], "due_at": "2026-11-26T08:00:00"}]), "due_at", id="naive-due-time"
        ),
        pytest.param((200, b'{"candidates": []}'), "empty", id="no-candidates"),
    ],
)
def test_bad_answers_fall_back(gemini: GeminiStandIn, reply: Reply, reason_part: str) -> None:
    gemini.reply = lambda: reply
    evidence = evidence_set()
    fallback = fallback_backlog(evidence)
    reason = assert_fell_back(writer_for(gemini).write(evidence, fallback), fallback)
    assert reason_part in reason and len(reason) <= 300
    assert len(gemini.requests) == 1  # an answer that arrived is not retried


def test_a_server_error_is_retried_then_falls_back(gemini: GeminiStandIn) -> None:
    gemini.reply = lambda: (500, b'{"error": {"code": 500, "message": "backend down", "status": "INTERNAL"}}')
    evidence = evidence_set()
    fallback = fallback_backlog(evidence)
    reason = assert_fell_back(writer_for(gemini, attempts=2, timeout_s=2).write(evidence, fallback), fallback)
    assert "500" in reason and "backend down" in reason
    assert len(gemini.requests) == 2  # `attempts` tries in all


def test_a_slow_model_times_out_to_the_fallback(gemini: GeminiStandIn) -> None:
    def stall() -> Reply:
        gemini.release.wait(timeout=30)  # far longer than the client's timeout; released at teardown
        return reply_json("too late", GOOD_TASKS)

    gemini.reply = stall
    evidence = evidence_set()
    fallback = fallback_backlog(evidence)
    reason = assert_fell_back(writer_for(gemini, attempts=1, timeout_s=0.5).write(evidence, fallback), fallback)
    assert "timeout" in reason.lower()


def test_no_key_means_no_request(gemini: GeminiStandIn) -> None:
    evidence = evidence_set()
    fallback = fallback_backlog(evidence)
    backlog = GeminiBacklogWriter(None, model=MODEL, base_url=gemini.url).write(evidence, fallback)
    assert assert_fell_back(backlog, fallback) == "no Gemini API key"
    assert backlog.writer.model is None and backlog.writer.dropped_tasks == []
    assert gemini.requests == []
