"""Alerts over REST as external agents and on-call staff use them, with the real twilio client
talking to a Twilio stand-in on loopback: raise, dedupe, text, read, acknowledge, clear, outage."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.orchestrator import alert_desk_for
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import utc_now
from serving import create_app
from tests.conftest import OPERATOR_HEADERS, MqttRecorder
from tests.twilio_standin import TwilioStandIn

ON_CALL = ["+15551110001", "+15551110002"]
ESCALATION = ["+15552220001"]
UNREACHABLE_MQTT = "mqtt://127.0.0.1:9"


@pytest.fixture
def twilio() -> Iterator[TwilioStandIn]:
    with TwilioStandIn() as standin:
        yield standin


def alert_settings(tmp_path: Path, twilio: TwilioStandIn, **overrides: object) -> FactorySettings:
    settings = load_settings(
        data_dir=tmp_path / "data",
        twilio_account_sid=twilio.account_sid,
        twilio_auth_token=twilio.auth_token,
        twilio_from_number="+15550000000",
        twilio_to_numbers=",".join(ON_CALL),
        twilio_escalation_numbers=",".join(ESCALATION),
        twilio_api_base_url=twilio.base_url,
        **{"mqtt_url": UNREACHABLE_MQTT, **overrides},
    )
    settings.ensure_dirs()
    return settings


@pytest.fixture
def api(tmp_path: Path, twilio: TwilioStandIn) -> Iterator[TestClient]:
    with TestClient(create_app(alert_settings(tmp_path, twilio)), headers=OPERATOR_HEADERS) as client:
        yield client


RUL_ALERT = {"level": "CRITICAL", "type": "RUL_LOW", "source": "pm_agent", "details": "R-07 bearing RUL 40 h"}


def test_a_critical_alert_is_texted_once_and_a_repeat_only_counts(api: TestClient, twilio: TwilioStandIn) -> None:
    first = api.post("/alert", json={**RUL_ALERT, "asset_id": "R-07"})
    assert first.status_code == 200, first.text
    handled = first.json()
    assert handled["status"] == "handled" and handled["action"] == "SCHEDULE_MAINTENANCE_NEXT_SHIFT"
    assert handled["created"] is True and handled["count"] == 1
    assert [n["status"] for n in handled["notifications"]] == ["sent", "sent"]

    texts = twilio.messages
    assert sorted(m.to for m in texts) == ON_CALL
    lines = texts[0].body.splitlines()
    assert lines[0] == "🔴 [6G-MAS ALERT] CRITICAL"  # what on-call phones filter on
    assert lines[1:3] == ["Agent: pm_agent", "Msg: R-07 bearing RUL 40 h"]
    assert f"Alert: {handled['alert_id']}" in lines and "Asset: R-07" in lines
    post = twilio.message_posts[0]
    assert set(post.form) >= {"To", "From", "Body"} and post.form["From"] == "+15550000000"

    repeat = api.post("/alert", json={**RUL_ALERT, "asset_id": "R-07"}).json()
    assert repeat["alert_id"] == handled["alert_id"] and repeat["created"] is False and repeat["count"] == 2
    assert repeat["notifications"] == [] and len(twilio.messages) == 2  # no new alert, no new text

    detail = api.get(f"/alerts/{handled['alert_id']}").json()
    assert detail["alert"]["count"] == 2 and detail["alert"]["state"] == "ACTIVE_UNACK"
    assert detail["alert"]["plan"]["action"] == "SCHEDULE_MAINTENANCE_NEXT_SHIFT"
    assert sorted(n["provider_id"] for n in detail["notifications"]) == sorted(m.sid for m in texts)
    events = [e["event"] for e in detail["history"]]
    assert events[0] == "raised" and events.count("repeated") == 1 and "plan_attached" in events

    acked = api.post(f"/alerts/{handled['alert_id']}/ack", json={"by": "ana", "comment": "on my way"}).json()
    assert acked["state"] == "ACTIVE_ACK" and acked["acknowledged_by"] == "ana" and acked["ack_comment"] == "on my way"
    cleared = api.post(f"/alerts/{handled['alert_id']}/clear", json={"by": "ana", "comment": "bearing changed"})
    assert cleared.json()["state"] == "CLEARED_ACK" and cleared.json()["cleared_by"] == "ana"

    state = api.get("/api/orchestrator/system-state").json()
    assert state == api.get("/system-state").json()
    assert state["alerts"][0] | RUL_ALERT == state["alerts"][0]  # echoes level, type, source, details
    assert state["decisions"][0]["plan"]["action"] == "SCHEDULE_MAINTENANCE_NEXT_SHIFT"
    assert state["last_update"] is not None


def test_earlier_levels_are_accepted_and_emergency_is_texted_like_critical(
    api: TestClient, twilio: TwilioStandIn
) -> None:
    emergency = api.post(
        "/api/orchestrator/alert",
        json={"level": "emergency", "type": "PPE_VIOLATION", "source": "ppe_agent", "details": "no hard hat, zone B"},
    ).json()
    assert emergency["action"] == "STOP_MACHINE_IMMEDIATE"
    assert {m.body.splitlines()[0] for m in twilio.messages} == {"🔴 [6G-MAS ALERT] EMERGENCY"}

    caution = api.post(
        "/alert", json={"level": "Caution", "type": "SOMETHING_ELSE", "source": "x", "details": "odd reading"}
    ).json()
    assert caution["action"] == "LOG_ONLY" and caution["notifications"] == []
    assert len(twilio.messages) == len(ON_CALL)  # WARNING-level alerts are recorded, not texted

    listed = api.get("/alerts", params={"severity": "WARNING"}).json()
    assert [a["type"] for a in listed["items"]] == ["SOMETHING_ELSE"] and listed["total"] == 1


def test_bad_bodies_are_refused_as_problems(api: TestClient) -> None:
    missing = api.post("/alert", json={"level": "CRITICAL", "type": "RUL_LOW", "source": "pm_agent"})
    assert missing.status_code == 422 and missing.headers["content-type"].startswith("application/problem+json")
    unknown_level = api.post("/alert", json={**RUL_ALERT, "level": "PANIC"})
    assert unknown_level.status_code == 422 and "EMERGENCY" in unknown_level.json()["detail"]
    assert api.get("/alerts/al-nope").status_code == 404
    assert api.post("/alerts/al-nope/ack", json={"by": "ana"}).status_code == 404


def test_without_credentials_texts_are_recorded_as_not_sent(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", mqtt_url=UNREACHABLE_MQTT, twilio_to_numbers=ON_CALL[0])
    with TestClient(create_app(settings), headers=OPERATOR_HEADERS) as api:
        handled = api.post("/alert", json=RUL_ALERT).json()
        notes = api.get(f"/alerts/{handled['alert_id']}").json()["notifications"]
    assert [(n["status"], n["detail"]) for n in notes] == [("not_sent", "not sent: no credentials")]


def test_a_store_outage_queues_the_alert_and_the_timers_record_and_text_it(
    tmp_path: Path, twilio: TwilioStandIn
) -> None:
    blocker = tmp_path / "db-dir"
    blocker.write_text("a file where the database directory should be: the store cannot open")
    settings = alert_settings(tmp_path, twilio, db_url=f"sqlite:///{blocker / 'serving.db'}")
    with TestClient(create_app(settings), headers=OPERATOR_HEADERS) as api:
        queued = api.post("/alert", json={**RUL_ALERT, "asset_id": "R-09"})
        assert queued.status_code == 200, queued.text
        assert queued.json()["status"] == "handled" and queued.json()["queued"] is True
        assert queued.json()["action"] == "SCHEDULE_MAINTENANCE_NEXT_SHIFT"  # the deterministic plan
        assert twilio.messages == []  # texts wait for the store, which guarantees one per alert

        blocker.unlink()  # the store comes back
        store = ServingStore(settings.resolved_db_url)
        report = alert_desk_for(settings, AlertBook(store.engine)).run_timers(now=utc_now())
        assert (report.drained, report.still_queued) == (1, 0)
        assert sorted(m.to for m in twilio.messages) == ON_CALL
        listed = api.get("/alerts", params={"asset_id": "R-09"}).json()
        assert listed["total"] == 1 and listed["items"][0]["plan"]["action"] == "SCHEDULE_MAINTENANCE_NEXT_SHIFT"
        store.dispose()


def test_an_unacknowledged_critical_alert_escalates_once_and_an_acknowledged_one_does_not(
    tmp_path: Path, twilio: TwilioStandIn
) -> None:
    settings = alert_settings(tmp_path, twilio, escalate_after_s=600)
    with TestClient(create_app(settings), headers=OPERATOR_HEADERS) as api:
        ignored = api.post("/alert", json={**RUL_ALERT, "asset_id": "R-01"}).json()
        handled = api.post("/alert", json={**RUL_ALERT, "asset_id": "R-02"}).json()
        api.post(f"/alerts/{handled['alert_id']}/ack", json={"by": "ana"})
    store = ServingStore(settings.resolved_db_url)
    desk = alert_desk_for(settings, AlertBook(store.engine))
    assert desk.run_timers(now=utc_now() + timedelta(seconds=300)).escalated == []  # not due yet
    later = utc_now() + timedelta(seconds=601)
    assert desk.run_timers(now=later).escalated == [(ignored["alert_id"], 1)]
    assert desk.run_timers(now=later + timedelta(seconds=60)).escalated == []  # each stage once
    escalations = twilio.messages_to(ESCALATION[0])
    assert len(escalations) == 1 and "escalation 1" in escalations[0].body
    assert ignored["alert_id"] in escalations[0].body
    store.dispose()


STAGED_RULES = """
escalation:
  - {after: 10m, notify: [escalation]}
  - {after: 30m, notify: [on_call, "+15553330001"]}
rules:
  - name: ppe
    model: ppe_vision
    when: {field: label, equals: violation}
    severity: CRITICAL
    type: PPE_VIOLATION
    message: "{asset_id}: violation"
"""


def test_escalation_stages_from_the_rules_file_go_in_order_to_their_recipients(
    tmp_path: Path, twilio: TwilioStandIn
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(STAGED_RULES)
    settings = alert_settings(tmp_path, twilio, alert_rules_file=rules)
    with TestClient(create_app(settings), headers=OPERATOR_HEADERS) as api:
        raised = api.post("/alert", json={**RUL_ALERT, "asset_id": "R-03"}).json()
    store = ServingStore(settings.resolved_db_url)
    desk = alert_desk_for(settings, AlertBook(store.engine))
    start = utc_now()
    assert desk.run_timers(now=start + timedelta(minutes=11)).escalated == [(raised["alert_id"], 1)]
    assert [m.to for m in twilio.messages_to(ESCALATION[0])] == ESCALATION
    assert desk.run_timers(now=start + timedelta(minutes=31)).escalated == [(raised["alert_id"], 2)]
    stage_two = [m for m in twilio.messages if "escalation 2" in m.body]
    assert sorted(m.to for m in stage_two) == sorted([*ON_CALL, "+15553330001"])
    store.dispose()

    rules.write_text(STAGED_RULES.replace('"+15553330001"', "boss"))
    with pytest.raises(ValueError, match=r"rules\.yaml:4: .*'boss' is neither on_call nor escalation"):
        alert_desk_for(settings, AlertBook(store.engine))


def test_twilio_and_gemini_outages_leave_the_alert_recorded_planned_and_published(
    tmp_path: Path,
    twilio: TwilioStandIn,
    mqtt_url: str,
    mqtt_recorder: Callable[..., MqttRecorder],
    free_port: Callable[[], int],
) -> None:
    twilio.fail_next_posts(100, status=503)
    settings = alert_settings(
        tmp_path,
        twilio,
        mqtt_url=mqtt_url,
        gemini_api_key="test-key",
        gemini_base_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
    )
    recorder = mqtt_recorder("alerts/#", "factory/main/+/alerts")
    with TestClient(create_app(settings), headers=OPERATOR_HEADERS) as api:
        handled = api.post("/alert", json={**RUL_ALERT, "asset_id": "R-05"})
        assert handled.status_code == 200 and handled.json()["status"] == "handled"
        body = handled.json()
        assert body["action"] == "SCHEDULE_MAINTENANCE_NEXT_SHIFT"
        assert body["plan"]["written_by"] == "rules" and body["plan"]["fallback_reason"]
        assert {n["status"] for n in body["notifications"]} == {"failed"}
        detail = api.get(f"/alerts/{body['alert_id']}").json()
        assert detail["alert"]["state"] == "ACTIVE_UNACK"
        assert api.get("/health").status_code == 200  # and the API keeps serving
    messages = recorder.wait_for(lambda got: len(got) >= 2)
    topics = sorted(m.topic for m in messages)
    assert topics == ["alerts/critical", "factory/main/R-05/alerts"]
    payload = json.loads(messages[0].payload)
    assert payload["alert_id"] == body["alert_id"] and payload["action"] == "SCHEDULE_MAINTENANCE_NEXT_SHIFT"
