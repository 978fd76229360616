"""The planner: deterministic plans per alert type, and Gemini's rewording through the real google-genai client.

A small HTTP server on loopback (tests/gemini_standin.py, the `gemini` fixture) stands in for
Gemini's generateContent endpoint and records each request; the real `google-genai` client talks to it.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from factory_pipelines.alert_model import AlertCandidate, AlertRecord, AlertState
from factory_pipelines.planner import PLAN_TEMPLATES, GeminiPlanWriter, Planner, plan_for
from factory_pipelines.telemetry import Severity
from tests.gemini_standin import GeminiStandIn, Reply, answer_with

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
MODEL = "gemini-test"
API_KEY = "test-key-123"


def alert(
    alert_type: str = "RUL_LOW",
    severity: Severity = Severity.WARNING,
    *,
    asset_id: str | None = "robot-7",
    evidence: dict[str, Any] | None = None,
) -> AlertCandidate:
    return AlertCandidate(
        rule="rule",
        type=alert_type,
        severity=severity,
        source="rul_lstm",
        asset_id=asset_id,
        message="remaining life 142 cycles, below 200",
        dedup_key=f"rul_lstm:{asset_id}:{alert_type}",
        observed_at=T0,
        evidence={"rul_lower": 142.25, "threshold": 200} if evidence is None else evidence,
    )


# ---- deterministic plans ----


@pytest.mark.parametrize(
    ("alert_type", "priority", "action"),
    [
        ("PPE_VIOLATION", 1, "STOP_MACHINE_IMMEDIATE"),
        ("DDoS_RISK", 2, "ISOLATE_NETWORK_SEGMENT"),
        ("RUL_LOW", 3, "SCHEDULE_MAINTENANCE_NEXT_SHIFT"),
        ("ENERGY_OPTIMIZATION", 4, "ADJUST_POWER_PROFILE"),
    ],
)
@pytest.mark.parametrize("severity", list(Severity))
def test_earlier_types_keep_their_codes_and_priorities(
    alert_type: str, priority: int, action: str, severity: Severity
) -> None:
    plan = plan_for(alert(alert_type, severity), now=T0)
    assert (plan.action, plan.priority, plan.written_by, plan.fallback_reason) == (action, priority, "rules", None)


def test_unknown_types_are_logged_unless_critical() -> None:
    logged = plan_for(alert("SOMETHING_NEW", Severity.WARNING), now=T0)
    assert (logged.action, logged.priority) == ("LOG_ONLY", 5)
    urgent = plan_for(alert("SOMETHING_NEW", Severity.CRITICAL), now=T0)
    assert (urgent.action, urgent.priority) == ("INVESTIGATE_NOW", 2)
    assert urgent.due_at < logged.due_at
    # Matched exactly, as the earlier clients send them: a differently spelled type is unknown.
    assert plan_for(alert("ddos_risk"), now=T0).action == "LOG_ONLY"


def test_our_own_types_and_severity_urgency() -> None:
    hazard = plan_for(alert("SAFETY_HAZARD"), now=T0)
    assert (hazard.action, hazard.priority, hazard.due_at) == ("EVACUATE_ZONE", 1, T0)
    assert plan_for(alert("TELEMETRY_OUT_OF_BAND"), now=T0).action == "INSPECT_ASSET"
    cyber = plan_for(alert("CYBER_ANOMALY", Severity.WARNING), now=T0)
    cyber_critical = plan_for(alert("CYBER_ANOMALY", Severity.CRITICAL), now=T0)
    assert (cyber.action, cyber.priority) == ("INSPECT_NETWORK_TRAFFIC", 3)
    assert (cyber_critical.action, cyber_critical.priority) == ("INSPECT_NETWORK_TRAFFIC", 2)
    assert cyber_critical.due_at < cyber.due_at


def test_due_times_follow_urgency() -> None:
    assert plan_for(alert("PPE_VIOLATION"), now=T0).due_at == T0  # immediately
    assert plan_for(alert("DDoS_RISK"), now=T0).due_at == T0 + timedelta(minutes=15)
    assert plan_for(alert("RUL_LOW"), now=T0).due_at == T0 + timedelta(hours=8)  # the next shift
    assert plan_for(alert("ENERGY_OPTIMIZATION"), now=T0).due_at == T0 + timedelta(hours=24)


def test_plans_name_the_asset_and_the_evidence() -> None:
    plan = plan_for(alert("RUL_LOW"), now=T0)
    assert "robot-7" in plan.summary and "142 cycles" in plan.summary
    text = " ".join(plan.steps)
    assert "robot-7" in text and "rul_lower=142.2" in text and "threshold=200" in text
    assert plan.owner_role == "maintenance planner"
    assert "bearing set" in plan.parts_or_tools and plan.safety_notes


def test_every_template_fills_in_for_any_alert() -> None:
    for alert_type, template in PLAN_TEMPLATES.items():
        assert 1 <= template.priority <= 5
        bare = plan_for(alert(alert_type, Severity.CRITICAL, asset_id=None, evidence={}), now=T0)
        assert bare.steps and "{" not in bare.summary + "".join(bare.steps), alert_type
        assert "rul_lstm" in bare.summary  # no asset: the source names what to look at


def test_plans_are_deterministic_for_candidates_and_records() -> None:
    candidate = alert("DDoS_RISK", Severity.CRITICAL)
    record = AlertRecord(
        alert_id="al-1",
        state=AlertState.ACTIVE_UNACK,
        first_seen=T0,
        last_seen=T0,
        **candidate.model_dump(include={"dedup_key", "rule", "type", "severity", "source", "asset_id", "message"}),
        evidence=candidate.evidence,
    )
    assert plan_for(candidate, now=T0) == plan_for(candidate, now=T0) == plan_for(record, now=T0)
    assert Planner(None).plan(candidate, T0) == plan_for(candidate, now=T0)


def test_long_evidence_is_shortened() -> None:
    evidence = {f"reading_{i}": list(range(50)) for i in range(10)}
    plan = plan_for(alert("TELEMETRY_OUT_OF_BAND", evidence=evidence), now=T0)
    assert "reading_0=" in plan.steps[0] and "reading_9" not in plan.steps[0]
    assert len(plan.steps[0]) < 400


# ---- Gemini's wording, through the stand-in (tests/gemini_standin.py) ----


def writer_for(gemini: GeminiStandIn, timeout_s: float = 5.0) -> GeminiPlanWriter:
    return GeminiPlanWriter(api_key=API_KEY, model=MODEL, base_url=gemini.url, timeout_s=timeout_s)


def test_gemini_rewords_summary_and_steps_only(gemini: GeminiStandIn) -> None:
    wording = {"summary": "Plan a bearing change on robot 7 next shift.", "steps": ["Book it.", "Order the bearing."]}
    gemini.reply = lambda: answer_with(json.dumps(wording))
    candidate = alert("RUL_LOW", Severity.CRITICAL)
    rules_plan = plan_for(candidate, now=T0)
    plan = Planner(writer_for(gemini)).plan(candidate, T0)

    assert (plan.summary, plan.steps) == (wording["summary"], wording["steps"])
    assert plan.written_by == f"gemini:{MODEL}" and plan.fallback_reason is None
    unchanged = ("action", "priority", "owner_role", "due_at", "parts_or_tools", "safety_notes")
    assert plan.model_dump(include=set(unchanged)) == rules_plan.model_dump(include=set(unchanged))

    [request] = gemini.requests
    assert request.path in {f"/v1beta/models/{MODEL}:generateContent", f"/v1/models/{MODEL}:generateContent"}
    assert request.headers.get("x-goog-api-key") == API_KEY
    prompt = json.dumps(request.body["contents"])
    assert "robot-7" in prompt and "RUL_LOW" in prompt and "SCHEDULE_MAINTENANCE_NEXT_SHIFT" in prompt
    generation = request.body["generationConfig"]
    assert generation["responseMimeType"] == "application/json"
    assert generation["responseJsonSchema"]["required"] == ["summary", "steps"]


def test_the_client_survives_garbage_collection_between_calls(gemini: GeminiStandIn) -> None:
    writer = writer_for(gemini)
    first = writer.rewrite(plan_for(alert(), now=T0), alert())
    gc.collect()
    second = writer.rewrite(plan_for(alert(), now=T0), alert())
    assert first.written_by == second.written_by == f"gemini:{MODEL}"
    assert len(gemini.requests) == 2


def test_a_server_error_falls_back_to_the_rules(gemini: GeminiStandIn) -> None:
    gemini.reply = lambda: (500, b'{"error": {"code": 500, "message": "backend down", "status": "INTERNAL"}}')
    candidate = alert("PPE_VIOLATION", Severity.CRITICAL)
    plan = Planner(writer_for(gemini)).plan(candidate, T0)
    assert plan.model_dump(exclude={"fallback_reason"}) == plan_for(candidate, now=T0).model_dump(
        exclude={"fallback_reason"}
    )
    assert plan.written_by == "rules" and plan.fallback_reason is not None and "500" in plan.fallback_reason
    assert len(gemini.requests) == 1  # one try: an alert does not wait on retries


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param((200, b"{not json"), id="malformed-http-body"),
        pytest.param(answer_with("Sure! Here is the plan: step one..."), id="text-not-json"),
        pytest.param(answer_with(json.dumps({"summary": "x", "steps": []})), id="empty-steps"),
        pytest.param(answer_with(json.dumps({"summary": "x", "steps": ["  "]})), id="blank-step"),
        pytest.param(answer_with(json.dumps({"steps": ["a"]})), id="no-summary"),
        pytest.param(answer_with(json.dumps({"summary": "x", "steps": ["a"], "priority": 5})), id="extra-field"),
        pytest.param((200, b'{"candidates": []}'), id="no-candidates"),
    ],
)
def test_bad_answers_fall_back_to_the_rules(gemini: GeminiStandIn, reply: Reply) -> None:
    gemini.reply = lambda: reply
    candidate = alert("DDoS_RISK")
    plan = Planner(writer_for(gemini)).plan(candidate, T0)
    rules_plan = plan_for(candidate, now=T0)
    assert (plan.summary, plan.steps, plan.action, plan.written_by) == (
        rules_plan.summary,
        rules_plan.steps,
        "ISOLATE_NETWORK_SEGMENT",
        "rules",
    )
    assert plan.fallback_reason
    assert len(gemini.requests) == 1


def test_a_slow_model_times_out_to_the_rules(gemini: GeminiStandIn) -> None:
    def stall() -> Reply:
        gemini.release.wait(timeout=30)  # far longer than the client's timeout; released at teardown
        return answer_with(json.dumps({"summary": "too late", "steps": ["too late"]}))

    gemini.reply = stall
    plan = Planner(writer_for(gemini, timeout_s=0.5)).plan(alert(), T0)
    assert plan.summary != "too late" and plan.written_by == "rules"
    assert plan.fallback_reason is not None and "timeout" in plan.fallback_reason.lower()


def test_no_key_means_no_request(gemini: GeminiStandIn) -> None:
    writer = GeminiPlanWriter(api_key=None, model=MODEL, base_url=gemini.url)
    plan = Planner(writer).plan(alert(), T0)
    assert plan.written_by == "rules" and plan.fallback_reason == "no Gemini API key"
    assert gemini.requests == []


def test_an_unreachable_model_falls_back(free_port: Callable[[], int]) -> None:
    writer = GeminiPlanWriter(api_key=API_KEY, model=MODEL, base_url=f"http://127.0.0.1:{free_port()}", timeout_s=2)
    plan = Planner(writer).plan(alert("SAFETY_HAZARD", Severity.CRITICAL), T0)
    assert (plan.action, plan.priority, plan.written_by) == ("EVACUATE_ZONE", 1, "rules")
    assert plan.fallback_reason


def test_every_type_the_shipped_rules_raise_has_its_own_plan() -> None:
    from factory_pipelines.alert_rules import load_rules
    from factory_pipelines.planner import PLAN_TEMPLATES

    raised = {rule.type for rule in load_rules().rules}
    assert raised and raised <= set(PLAN_TEMPLATES), f"types without a plan: {raised - set(PLAN_TEMPLATES)}"
