"""Plays the earlier external agents and orchestrator dashboards over plain HTTP (`POST /alert` with the
four-string body, `/system-state`, `/api/orchestrator/status`), and the on-call phone that reads the
texts through the Twilio stand-in. Nothing but an address and an API key differs from before.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from factory_pipelines.sms import SEVERITY_MARKER
from tests.compat.running_platform import ON_CALL, SMS_TAG, RunningPlatform
from tests.twilio_standin import StoredMessage
from tests.waiting import wait_until

RUN = uuid.uuid4().hex[:6]  # sources unique to this run, so no other client's alert is deduplicated with ours
EARLIER_ACTIONS = {
    "PPE_VIOLATION": "STOP_MACHINE_IMMEDIATE",
    "DDoS_RISK": "ISOLATE_NETWORK_SEGMENT",
    "RUL_LOW": "SCHEDULE_MAINTENANCE_NEXT_SHIFT",
    "ENERGY_OPTIMIZATION": "ADJUST_POWER_PROFILE",
}
EARLIER_PRIORITIES = {"PPE_VIOLATION": 1, "DDoS_RISK": 2, "RUL_LOW": 3, "ENERGY_OPTIMIZATION": 4}
ALERT_PATHS = ("/alert", "/api/orchestrator/alert")


def earlier_alert(level: str, type_: str, source: str, details: str) -> dict[str, str]:
    return {"level": level, "type": type_, "source": source, "details": details}


def handled(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "handled" and isinstance(body["action"], str)
    return body


def texts_naming(platform: RunningPlatform, alert_id: str) -> list[StoredMessage]:
    return [m for m in platform.twilio.messages_to(ON_CALL) if f"Alert: {alert_id}" in m.body.splitlines()]


# ---- POST /alert -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALERT_PATHS)
def test_post_alert_answers_the_earlier_action_codes(path: str, operator: httpx.Client, viewer: httpx.Client) -> None:
    """The four earlier types keep their codes and priorities; any other type is LOG_ONLY.

    WARNING is used so nothing is texted (CRITICAL and EMERGENCY are in the SMS test below).
    """
    source = f"compat-script-{RUN}-{path.strip('/').replace('/', '-')}"
    for type_, action in {**EARLIER_ACTIONS, "MACHINE_NOISE": "LOG_ONLY"}.items():
        body = handled(operator.post(path, json=earlier_alert("WARNING", type_, source, f"{type_} seen by a script")))
        assert body["action"] == action, type_
        assert body["plan"]["action"] == action
        if type_ in EARLIER_PRIORITIES:
            assert body["plan"]["priority"] == EARLIER_PRIORITIES[type_]
        stored = viewer.get(f"/alerts/{body['alert_id']}").json()["alert"]
        assert (stored["type"], stored["source"], stored["severity"]) == (type_, source, "WARNING")


def test_post_alert_takes_the_five_levels_in_any_case(operator: httpx.Client, viewer: httpx.Client) -> None:
    """NORMAL, CAUTION and WARNING in mixed case here; `Critical` and `emergency` in the SMS test."""
    expected = {"normal": "INFO", "Caution": "WARNING", "wArNiNg": "WARNING"}  # alert_model.LEGACY_LEVELS
    for level, severity in expected.items():
        source = f"compat-levels-{RUN}-{level}"
        body = handled(operator.post("/alert", json=earlier_alert(level, "MACHINE_NOISE", source, f"level {level}")))
        assert body["action"] == "LOG_ONLY"
        stored = viewer.get(f"/alerts/{body['alert_id']}").json()["alert"]
        assert (stored["level"], stored["severity"]) == (level.upper(), severity)
    unknown = operator.post("/alert", json=earlier_alert("SEVERE", "MACHINE_NOISE", f"compat-{RUN}", "x"))
    assert unknown.status_code == 422 and "SEVERE" in unknown.text


@pytest.mark.parametrize("missing", ["level", "type", "source", "details"])
def test_post_alert_missing_a_field_is_422(missing: str, operator: httpx.Client) -> None:
    body = earlier_alert("WARNING", "RUL_LOW", f"compat-missing-{RUN}", "no field")
    del body[missing]
    for path in ALERT_PATHS:
        answer = operator.post(path, json=body)
        assert answer.status_code == 422, answer.text
        assert missing in answer.text


def test_post_alert_needs_the_operator_key(platform: RunningPlatform, viewer: httpx.Client) -> None:
    body = earlier_alert("WARNING", "RUL_LOW", f"compat-access-{RUN}", "who may raise alerts")
    for path in ALERT_PATHS:
        assert viewer.post(path, json=body).status_code == 403
        assert httpx.post(f"{platform.api_url}{path}", json=body, timeout=10).status_code == 401
    assert viewer.get("/alerts", params={"source": f"compat-access-{RUN}"}).json()["total"] == 0


# ---- the orchestrator's state ------------------------------------------------------------------


def test_system_state_echoes_alerts_and_decisions_newest_first(operator: httpx.Client, viewer: httpx.Client) -> None:
    source = f"compat-dashboard-{RUN}"
    first = earlier_alert("WARNING", "ENERGY_OPTIMIZATION", source, "line 3 draws 6 kW at idle")
    second = earlier_alert("Caution", "MACHINE_NOISE", source, "press 4 louder than usual")
    ids = [
        handled(operator.post(path, json=body))["alert_id"]
        for path, body in zip(ALERT_PATHS, (first, second), strict=True)
    ]

    for path in ("/system-state", "/api/orchestrator/system-state"):
        answer = viewer.get(path)
        assert answer.status_code == 200, answer.text
        state = answer.json()
        assert set(state) >= {"alerts", "decisions", "last_update"}
        stamps = [a["timestamp"] for a in state["alerts"]]
        assert stamps == sorted(stamps, reverse=True) and state["last_update"] == stamps[0]
        ours = [a for a in state["alerts"] if a["source"] == source]
        assert [a["alert_id"] for a in ours] == ids[::-1]  # newest first
        for echoed, sent in zip(ours, (second, first), strict=True):
            assert {k: echoed[k] for k in sent} == {**sent, "level": sent["level"].upper()}
        decisions = {d["alert"]["alert_id"]: d for d in state["decisions"]}
        assert decisions[ids[0]]["plan"]["action"] == "ADJUST_POWER_PROFILE"
        assert decisions[ids[1]]["plan"]["action"] == "LOG_ONLY"
        assert set(decisions[ids[0]]) >= {"timestamp", "alert", "plan"}
        assert decisions[ids[0]]["alert"]["details"] == first["details"]


def test_orchestrator_status_has_the_earlier_shape(viewer: httpx.Client) -> None:
    answer = viewer.get("/api/orchestrator/status")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["agent"] == "Orchestrator"
    # documented in serving/agents.py: "alerting" while a CRITICAL (or EMERGENCY) alert is open
    assert body["state"] == ("alerting" if body["open_critical_alerts"] else "nominal")


# ---- texts to the on-call phone ----------------------------------------------------------------


def test_critical_and_emergency_are_texted_once_in_the_earlier_layout(
    platform: RunningPlatform, operator: httpx.Client, viewer: httpx.Client
) -> None:
    warning = earlier_alert("Warning", "RUL_LOW", f"compat-phone-{RUN}-w", "bearing wear rising")
    critical = earlier_alert("Critical", "RUL_LOW", f"compat-phone-{RUN}-c", "R-07 bearing RUL 40 h")
    emergency = {
        **earlier_alert("emergency", "PPE_VIOLATION", f"compat-phone-{RUN}-e", "worker without hard hat at press 4"),
        "asset_id": f"compat-press-{RUN}",  # ours: an optional asset, shown on its own line
    }
    warned = handled(operator.post("/alert", json=warning))
    assert warned["notifications"] == []
    sent = {}
    for body, action in ((critical, "SCHEDULE_MAINTENANCE_NEXT_SHIFT"), (emergency, "STOP_MACHINE_IMMEDIATE")):
        answer = handled(operator.post("/alert", json=body))
        assert answer["action"] == action
        statuses = [(n["recipient"], n["status"], n["detail"]) for n in answer["notifications"]]
        assert [s[:2] for s in statuses] == [(ON_CALL, "sent")], statuses
        sent[body["level"]] = answer["alert_id"]

    for body in (critical, emergency):
        alert_id = sent[body["level"]]
        listed = viewer.get("/alerts", params={"source": body["source"]}).json()["items"]
        assert [a["alert_id"] for a in listed] == [alert_id]  # the id the phone reads is the API's
        texts = wait_until(lambda alert_id=alert_id: texts_naming(platform, alert_id), 10, f"the text of {alert_id}")
        assert len(texts) == 1
        expected = [
            f"{SEVERITY_MARKER} {SMS_TAG} {body['level'].upper()}",
            f"Agent: {body['source']}",
            f"Msg: {body['details']}",
            *([f"Asset: {body['asset_id']}"] if "asset_id" in body else []),
            f"Alert: {alert_id}",
        ]
        assert texts[0].body.splitlines() == expected
        assert texts[0].from_ == "+15550000000"
        notes = viewer.get(f"/alerts/{alert_id}").json()["notifications"]
        assert [(n["recipient"], n["status"], n["body"]) for n in notes] == [(ON_CALL, "sent", texts[0].body)]

    repeat = handled(operator.post("/alert", json=critical))
    assert (repeat["alert_id"], repeat["created"], repeat["count"]) == (sent["Critical"], False, 2)
    assert repeat["notifications"] == []
    assert len(texts_naming(platform, sent["Critical"])) == 1
    assert texts_naming(platform, warned["alert_id"]) == []
    assert not [m for m in platform.twilio.messages if warning["source"] in m.body]

    for alert_id in sent.values():  # leave the shared platform's orchestrator as the other clients expect it
        assert operator.post(f"/alerts/{alert_id}/clear", json={"comment": "compat test done"}).status_code == 200
