"""Plays the earlier dashboards and scripts over plain HTTP: the per-agent status, history and health
paths, the backlog agent's routes, the robot backend and the ML service, each read after a simulated
fleet (machines, robots, a safety station, a PPE camera) went through the real broker, collector and
prediction runs. Nothing but an address and an API key differs from what those clients sent before.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest
from pydantic import BaseModel

from factory_pipelines.cyber_model import _Episode, _perturb
from factory_pipelines.mqtt import connect_and_wait, make_client
from factory_pipelines.simulator import Fleet, FleetConfig
from factory_pipelines.telemetry import MachineTelemetry, dump_payload, telemetry_topic, utc_now
from factory_pipelines.windows import aligned_window_start
from tests.compat.running_platform import RunningPlatform
from tests.waiting import wait_until

PREFIX = "rest-"  # every asset of this file, so the shared platform's other clients never meet them
AGENTS = {
    "pm": ("pm_agent", "rul_lstm"),
    "energy": ("energy_agent", "energy_iforest"),
    "cyber": ("cyber_agent", "cyber_detector"),
    "safety": ("hazard_agent", "safety_hazard"),
    "ppe": ("ppe_agent", "ppe_vision"),
}
STATUS_VALUES = {"active", "warning", "critical"}
SPIKING = f"{PREFIX}machine-02"  # energy_spike: 4-6 kW that its speed does not explain
FLOODED = f"{PREFIX}machine-03"  # network fields as cyber_model's DDoS episodes change them
WORKER = f"{PREFIX}worker-01"  # named by every frame of the fleet's camera
TICKS = 12  # seconds of the fleet at 1 Hz: six 2-second windows
PREDICTION_FIELDS = ("model_name", "model_version", "asset_id", "window_key", "score", "label", "produced_at")


@dataclass(frozen=True)
class ScoredFleet:
    """What the fleet published and what the platform made of it."""

    assets: dict[str, list[str]]  # by agent: the asset ids its model scores
    before: dict[str, dict[str, Any]]  # each agent's status before the fleet was published
    champions: dict[str, str]  # model name -> champion version, as GET /api/ml/model_info says
    window_keys: list[str]
    published: int


def renamed(topic: str, payload: BaseModel, site: str) -> tuple[str, BaseModel]:
    """The simulator's payload under this file's asset ids (and zones, which name safety predictions)."""
    update: dict[str, Any] = {"asset_id": PREFIX + payload.asset_id}  # type: ignore[attr-defined]
    zone = getattr(payload, "zone", None)
    if zone:
        update["zone"] = PREFIX + zone
    if topic.startswith("cleanroom/"):
        raise AssertionError("this fleet has no cleanroom")
    if getattr(payload, "kind", None) == "camera_frame":
        update["worker_id"] = WORKER  # the badge the camera read: one worker in front of it
    return telemetry_topic(site, update["asset_id"]), payload.model_copy(update=update)


def flooded(payload: MachineTelemetry, rng: np.random.Generator) -> MachineTelemetry:
    """A machine reading during a DDoS, changed as the cyber model's training history changes them.

    Moderate (severity 0.45 of 0.15-1.0, errors 0.3 % per % lost): the tiny champion mistakes a
    strong flood for the simulator's `network` fault about half the time (both saturate the link).
    With this fleet's seeds and window-aligned pace it calls this one ddos in 4 of the 6 windows
    (mitm and network_fault in the others) on every run; one DDoS_RISK alert needs only one.
    """
    reading = {
        "network_latency_ms": payload.network_latency_ms,
        "packet_loss_pct": payload.packet_loss_pct,
        "error_rate_pct": payload.error_rate_pct,
    }
    _perturb(reading, _Episode("ddos", severity=0.45, offset_ms=0.0, error_per_loss=0.3), rng)
    return payload.model_copy(update=reading)


def publish_fleet(platform: RunningPlatform) -> tuple[set[str], int]:
    """Run the fleet at the simulator's 1 Hz for TICKS seconds over MQTT (QoS 1, as `factory simulate`).

    Live pace matters: the champions learned windows holding `window_seconds` readings per asset at
    1 Hz, so each reading goes out half a second into its second of the collector's windows (the
    receipt time places it): every window then holds exactly that many, as in training, and not a
    burst the models never saw. Returns the asset ids and how many messages went out.
    """
    fleet = Fleet(
        FleetConfig(machines=4, robots=2, cleanrooms=0, safety_stations=1, cameras=1, seed=1207),
        {"machine-02": "energy_spike"},
    )
    rng = np.random.default_rng(1207)
    site = platform.settings.site
    ids: set[str] = set()
    sent = 0
    client = make_client(f"rest-fleet-{threading.get_ident()}")
    connect_and_wait(client, platform.settings.mqtt_url)
    seconds = platform.settings.window_seconds
    first = aligned_window_start(utc_now(), seconds) + timedelta(seconds=seconds + 0.5)
    pace = threading.Event()
    try:
        for tick in range(TICKS):
            due = first + timedelta(seconds=tick)
            pace.wait(max(0.0, (due - utc_now()).total_seconds()))
            for topic, payload in fleet.step(due):
                topic, payload = renamed(topic, payload, site)
                if payload.asset_id == FLOODED:  # type: ignore[attr-defined]
                    payload = flooded(payload, rng)  # type: ignore[arg-type]
                client.publish(topic, dump_payload(payload), qos=1).wait_for_publish(10)
                ids.add(payload.asset_id)  # type: ignore[attr-defined]
                sent += 1
    finally:
        client.disconnect()
        client.loop_stop()
    return ids, sent


def status(client: httpx.Client, agent: str) -> dict[str, Any]:
    answer = client.get(f"/api/{agent}/status")
    assert answer.status_code == 200, answer.text
    return answer.json()


def history(client: httpx.Client, agent: str, **params: Any) -> list[dict[str, Any]]:
    answer = client.get(f"/api/{agent}/history", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()["history"]


def aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None, f"{text} has no UTC offset"
    return moment


@pytest.fixture(scope="module")
def scored(platform: RunningPlatform, viewer: httpx.Client) -> ScoredFleet:
    """The fleet's burst through broker and collector, then the daemon's window and alert ticks."""
    before = {agent: status(viewer, agent) for agent in AGENTS}
    info = viewer.get("/api/ml/model_info")
    assert info.status_code == 200, info.text
    champions = {m["name"]: m["version"] for m in info.json()["models"] if m["status"] == "champion"}
    assert set(champions) >= {model for _, model in AGENTS.values()}, champions

    ids, sent = publish_fleet(platform)

    def all_sealed(rows: pl.DataFrame) -> bool:
        return rows.filter(pl.col("asset_id").is_in(sorted(ids))).height >= sent

    keys = platform.score(all_sealed, f"{sent} messages of the {PREFIX} fleet")
    machines = sorted(i for i in ids if "machine" in i)
    return ScoredFleet(
        assets={
            "pm": sorted(i for i in ids if "robot" in i),
            "energy": machines,
            "cyber": machines,
            "safety": sorted(i for i in ids if "safety" in i),
            "ppe": sorted(i for i in ids if "camera" in i),
        },
        before=before,
        champions=champions,
        window_keys=keys,
        published=sent,
    )


# ---- GET /api/{agent}/status, /history, /health -------------------------------------------------


@pytest.mark.parametrize("agent", list(AGENTS))
def test_agent_status_has_the_earlier_fields_filled_from_real_predictions(
    agent: str, scored: ScoredFleet, viewer: httpx.Client
) -> None:
    agent_id, model = AGENTS[agent]
    body = status(viewer, agent)
    assert body["agent_id"] == agent_id
    assert body["status"] in STATUS_VALUES | ({"emergency"} if agent == "safety" else set())
    assert isinstance(body["uptime"], int | float) and body["uptime"] > 0
    assert isinstance(body["errors"], int) and body["errors"] >= 0
    assert isinstance(body["custom_state"], dict) and body["custom_state"]
    assert aware(body["timestamp"]) > utc_now() - timedelta(minutes=1)

    mine = scored.assets[agent]
    assert mine, f"the fleet has nothing the {agent} agent scores"
    grown = body["predictions_made"] - scored.before[agent]["predictions_made"]
    assert grown >= len(mine), f"{agent}: {grown} new predictions for {len(mine)} assets"
    metrics = body["metrics"]
    assert set(metrics) >= {"total_predictions", "successful_predictions", "failed_predictions", "average_latency_ms"}
    assert metrics["total_predictions"] == body["predictions_made"]
    assert metrics["total_predictions"] > scored.before[agent]["metrics"]["total_predictions"]
    assert isinstance(metrics["successful_predictions"], int) and isinstance(metrics["failed_predictions"], int)
    assert isinstance(metrics["average_latency_ms"], int | float) and metrics["average_latency_ms"] > 0

    recent = body["prediction_history"]
    assert 0 < len(recent) <= 10
    assert body["last_prediction"] == recent[-1]  # newest last
    starts = [p["window_start"] for p in recent]
    assert starts == sorted(starts)
    ours = [p for p in recent if p["asset_id"] in mine]
    assert {p["asset_id"] for p in ours} == set(mine), f"{agent}: {[p['asset_id'] for p in recent]}"
    for prediction in ours:
        assert prediction["model_name"] == model
        assert prediction["model_version"] == scored.champions[model]
        assert prediction["window_key"] in scored.window_keys
        for field in (*PREDICTION_FIELDS, "alert_level", "action", "timestamp"):
            assert field in prediction, f"{agent} prediction without {field}"


def test_agent_history_returns_the_last_n_newest_last(scored: ScoredFleet, viewer: httpx.Client) -> None:
    answer = viewer.get("/api/energy/history")
    assert answer.status_code == 200, answer.text
    default = answer.json()["history"]
    assert len(default) == min(10, answer.json()["total"])  # the earlier agents' default
    assert len(default) >= len(scored.assets["energy"])
    assert default == status(viewer, "energy")["prediction_history"]
    last_three = history(viewer, "energy", limit=3)
    assert last_three == default[-3:]
    assert [p["window_start"] for p in default] == sorted(p["window_start"] for p in default)
    for entry in default:
        assert entry["alert_level"] in {"NORMAL", "CAUTION", "WARNING", "CRITICAL", "EMERGENCY"}
        assert isinstance(entry["action"], str) and entry["action"]
        assert aware(entry["timestamp"]) == aware(entry["produced_at"])
        for field in PREDICTION_FIELDS:
            assert field in entry

    everything = viewer.get("/api/energy/history", params={"limit": 0})
    assert everything.status_code == 422  # the earlier "limit=0 is everything" was a bug
    one = history(viewer, "pm", limit=1)
    assert len(one) == 1 and one == history(viewer, "pm", limit=10)[-1:]  # the newest, whoever's it is


@pytest.mark.parametrize("agent", list(AGENTS))
def test_agent_health_answers_healthy_with_the_broker_connected(agent: str, viewer: httpx.Client) -> None:
    answer = viewer.get(f"/api/{agent}/health")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "healthy", "agent_id": AGENTS[agent][0], "mqtt_connected": True}


def test_unknown_agent_is_not_found_and_other_routes_are_not_taken(viewer: httpx.Client) -> None:
    assert viewer.get("/api/orchestra/status").status_code == 404
    orchestrator = viewer.get("/api/orchestrator/status")
    assert orchestrator.status_code == 200 and orchestrator.json()["agent"] == "Orchestrator"
    assert "agent_id" not in orchestrator.json()
    cleanroom = viewer.get("/api/cleanroom/status")
    assert cleanroom.status_code == 200 and "cleanrooms" in cleanroom.json()


# ---- alert rules raise the earlier types from real predictions -----------------------------------


def test_energy_spike_and_ddos_raise_the_earlier_types_with_their_actions(
    scored: ScoredFleet, viewer: httpx.Client
) -> None:
    """The models' verdicts, not an echo: the rules turn them into the earlier types and codes."""
    expected = {
        SPIKING: (
            "energy",
            "energy_iforest",
            {"label": "anomaly"},
            "ENERGY_OPTIMIZATION",
            "WARNING",
            "ADJUST_POWER_PROFILE",
            4,
        ),
        FLOODED: (
            "cyber",
            "cyber_detector",
            {"label": "attack", "attack_type": "ddos"},
            "DDoS_RISK",
            "CRITICAL",
            "ISOLATE_NETWORK_SEGMENT",
            2,
        ),
    }
    state = viewer.get("/system-state").json()
    for asset, (agent, model, verdict, type_, level, action, priority) in expected.items():
        verdicts = [p for p in history(viewer, agent, limit=50) if p["asset_id"] == asset]
        assert verdicts, f"no {model} prediction for {asset}"
        flagged = [p for p in verdicts if all(p.get(k) == v for k, v in verdict.items())]
        seen = [(p["label"], p.get("attack_type")) for p in verdicts]
        assert flagged, f"{model} on {asset}: no window judged {verdict}; verdicts {seen}"
        for prediction in flagged:
            assert (prediction["alert_level"], prediction["alert_type"], prediction["action"]) == (level, type_, action)

        alerts = viewer.get("/alerts", params={"asset_id": asset, "type": type_}).json()["items"]
        assert len(alerts) == 1, alerts  # one alert per source, type and asset, however many windows
        alert = alerts[0]
        assert (alert["source"], alert["severity"]) == (model, level)
        assert alert["lineage"]["model_version"] == scored.champions[model]
        assert alert["plan"]["action"] == action and alert["plan"]["priority"] == priority
        echoed = next(a for a in state["alerts"] if a["alert_id"] == alert["alert_id"])
        assert {k: echoed[k] for k in ("level", "type", "source", "details")} == {
            "level": level,
            "type": type_,
            "source": model,
            "details": alert["message"],
        }
        decision = next(d for d in state["decisions"] if d["alert"]["alert_id"] == alert["alert_id"])
        assert decision["plan"]["action"] == action
        assert aware(decision["timestamp"]) == aware(alert["last_seen"])


def test_agent_status_follows_its_open_alerts(
    scored: ScoredFleet, viewer: httpx.Client, operator: httpx.Client
) -> None:
    """A CRITICAL alert sent in pm_agent's name makes pm `critical`; EMERGENCY makes safety `emergency`."""
    raised = []
    for source, level, agent, expected in (
        ("pm_agent", "CRITICAL", "pm", "critical"),
        ("hazard_agent", "EMERGENCY", "safety", "emergency"),
    ):
        body = {"level": level, "type": f"REST_STATUS_{agent.upper()}", "source": source, "details": f"{agent} check"}
        answer = operator.post("/alert", json=body)
        assert answer.status_code == 200, answer.text
        alert_id = answer.json()["alert_id"]
        raised.append(alert_id)
        now = status(viewer, agent)
        assert now["status"] == expected
        assert alert_id in [a["alert_id"] for a in now["open_alerts"]]
    orchestrator = viewer.get("/api/orchestrator/status").json()
    assert orchestrator["state"] == "alerting" and orchestrator["open_critical_alerts"] >= 2

    for alert_id in raised:  # leave the shared platform's agents to their predictions
        cleared = operator.post(f"/alerts/{alert_id}/clear", json={"comment": "compat test done"})
        assert cleared.status_code == 200, cleared.text
    assert raised[0] not in [a["alert_id"] for a in status(viewer, "pm")["open_alerts"]]


# ---- robots, cleanroom, telemetry and the ML service ---------------------------------------------


def test_robot_backend_lists_the_fleet_robots_and_sends_them_commands(
    platform: RunningPlatform, scored: ScoredFleet, viewer: httpx.Client, operator: httpx.Client
) -> None:
    health = viewer.get("/health")
    assert health.status_code == 200, health.text
    robots = viewer.get("/api/robots", params={"limit": 1000}).json()
    listed = {r["robot_id"]: r for r in robots["items"]}
    robot_id = scored.assets["pm"][0]
    assert set(scored.assets["pm"]) <= set(listed)
    robot = listed[robot_id]
    assert robot["health_source"] == "device"
    assert robot["health_score"] == robot["telemetry"]["health_score"]
    assert robot["rul"]["model_version"] == scored.champions["rul_lstm"]
    assert robot["maintenance_priority"] in {"critical", "high", "medium", "low"}

    detail = viewer.get(f"/api/robots/{robot_id}")
    assert detail.status_code == 200
    assert detail.json()["robot_id"] == robot_id and detail.json()["telemetry"]["asset_id"] == robot_id
    assert viewer.get(f"/api/robots/{PREFIX}no-such-robot").status_code == 404

    received: list[dict[str, Any]] = []
    subscribed = threading.Event()
    listener = make_client(f"rest-robot-{threading.get_ident()}")
    listener.on_subscribe = lambda *_args: subscribed.set()
    listener.on_message = lambda _c, _u, message: received.append(json.loads(message.payload))
    connect_and_wait(listener, platform.settings.mqtt_url)
    try:  # the robot's side: it listens on its command topic, as the earlier robots did
        listener.subscribe(f"factory/main/{robot_id}/cmd", qos=1)
        assert subscribed.wait(10), "the broker never confirmed the subscription"
        command = {"command": "slow", "parameters": {"factor": 0.5}}
        assert viewer.post(f"/api/robots/{robot_id}/command", json=command).status_code == 403
        sent = operator.post(f"/api/robots/{robot_id}/command", json=command)
        assert sent.status_code == 202, sent.text
        assert sent.json()["topic"] == f"factory/main/{robot_id}/cmd" and sent.json()["status"] == "sent"
        wait_until(lambda: any(m.get("command_id") == sent.json()["command_id"] for m in received), 10, "the command")
    finally:
        listener.disconnect()
        listener.loop_stop()
    arrived = next(m for m in received if m.get("command_id") == sent.json()["command_id"])
    assert (arrived["command"], arrived["parameters"]) == ("slow", {"factor": 0.5})


def test_cleanroom_and_latest_telemetry_answer_what_devices_sent(
    platform: RunningPlatform, scored: ScoredFleet, viewer: httpx.Client
) -> None:
    room = f"{PREFIX}cleanroom-01"
    reading = {
        "kind": "cleanroom",
        "particles_per_m3": {"0.3": 9000.0, "0.5": 2500.0, "1.0": 600.0, "5.0": 20.0},
        "iso_class": 5.0,
        "temperature": 21.0,
        "humidity": 70.0,
        "differential_pressure_pa": 12.0,
    }
    with platform.device() as device:
        device.publish(telemetry_topic("main", room), reading)

    def listed() -> dict[str, Any] | None:
        rooms = viewer.get("/api/cleanroom/status").json()["cleanrooms"]
        return next((r for r in rooms if r["asset_id"] == room), None)

    found = wait_until(listed, 10, "the cleanroom in /api/cleanroom/status")
    assert found["humidity"] == 70.0 and found["within_limits"] is False
    assert [v for v in found["violations"] if v.startswith("humidity")], found["violations"]
    assert viewer.get("/api/cleanroom/status").json()["status"] == "out_of_limits"

    robot_id = scored.assets["pm"][-1]
    latest = viewer.get("/api/telemetry/latest", params={"asset_id": robot_id}).json()
    assert [(i["kind"], i["asset_id"]) for i in latest["items"]] == [("robot", robot_id)]
    assert latest["items"][0]["topic"] == telemetry_topic("main", robot_id)
    assert latest["items"][0]["reading"]["cycle_count"] >= 0


def test_ml_service_predicts_rul_with_an_interval_at_the_requested_level(
    scored: ScoredFleet, viewer: httpx.Client
) -> None:
    features = [0.3, 3.2, 45.0, 2.1, 1200.0]  # vibration RMS, kurtosis, temperature, current, cycles
    wide = viewer.post(
        "/api/ml/predict", json={"robot_id": f"{PREFIX}ml-robot", "features": features, "confidence_level": 0.95}
    )
    assert wide.status_code == 200, wide.text
    answer = wide.json()
    assert answer["robot_id"] == f"{PREFIX}ml-robot"
    interval = answer["confidence_interval"]
    assert interval["confidence_level"] == 0.95
    assert 0 <= interval["lower"] <= answer["rul_cycles"]
    assert interval["upper"] is None or interval["upper"] >= answer["rul_cycles"]
    # no device score: derived from RMS 0.3 g (50 x 0.2/0.9 points off), kurtosis and temperature healthy
    assert (answer["health_score"], answer["health_source"]) == (88.9, "derived")
    assert answer["maintenance_priority"] in {"critical", "high", "medium", "low"}
    assert answer["model"]["version"] == scored.champions["rul_lstm"]

    narrow = viewer.post(
        "/api/ml/predict", json={"robot_id": f"{PREFIX}ml-robot", "features": features, "confidence_level": 0.5}
    ).json()
    assert narrow["rul_cycles"] == pytest.approx(answer["rul_cycles"])
    assert narrow["confidence_interval"]["lower"] >= interval["lower"]

    batch = viewer.post(
        "/api/ml/batch_predict",
        json=[
            {"robot_id": f"{PREFIX}ml-a", "features": features, "confidence_level": 0.95},
            {"robot_id": f"{PREFIX}ml-b", "features": [0.9, 8.0, 75.0, 3.0, 1300.0], "confidence_level": 0.9},
        ],
    )
    assert batch.status_code == 200, batch.text
    answers = batch.json()
    assert [a["robot_id"] for a in answers] == [f"{PREFIX}ml-a", f"{PREFIX}ml-b"]
    assert [a["confidence_interval"]["confidence_level"] for a in answers] == [0.95, 0.9]
    assert answers[1]["health_score"] < answers[0]["health_score"]
    assert viewer.post("/api/ml/predict", json={"robot_id": "x", "features": [1.0, 2.0]}).status_code == 422

    info = viewer.get("/api/ml/model_info").json()["models"]
    by_name = {m["name"]: m for m in info}
    assert by_name["rul_lstm"]["status"] == "champion"
    assert by_name["rul_lstm"]["version"] == scored.champions["rul_lstm"]
    assert aware(by_name["rul_lstm"]["trained_at"]) < utc_now()


# ---- the backlog agent's routes ------------------------------------------------------------------


def test_backlog_routes_answer_the_current_shift_after_it_is_written(
    platform: RunningPlatform, scored: ScoredFleet, viewer: httpx.Client
) -> None:
    """The earlier backlog agent's two routes, beside our own `/backlog/...` for the same backlogs.

    A shift's backlog is written from what was known at its start, so this fleet (published during
    the shift) is not in it; the routes are checked against the platform's own answer instead.
    """
    calendar = platform.settings.shift_calendar
    shift = calendar.shift_at(utc_now())
    previous = calendar.shift_at(shift.start - timedelta(seconds=1))
    platform.write_backlog(previous.key)
    platform.write_backlog(shift.key)
    written = viewer.get("/backlog/current")
    assert written.status_code == 200, written.text
    backlog = written.json()
    assert backlog["shift"]["key"] == shift.key

    current = viewer.get("/api/backlog/current_shift").json()
    assert aware(current["shift_start"]) == shift.start
    assert current["events_count"] == len(current["events"]) == len(backlog["tasks"])
    assert current["events"] == backlog["tasks"]

    recent = viewer.get("/api/backlog/backlog_history", params={"limit": 2}).json()["history"]
    assert [entry["backlog_id"] for entry in recent] == [f"backlog-{shift.key}", f"backlog-{previous.key}"]
    for entry, period in zip(recent, (shift, previous), strict=True):
        ours = viewer.get(f"/backlog/{period.key}").json()
        assert entry["backlog_id"] == ours["backlog_id"]
        assert aware(entry["generated_at"]) == aware(ours["generated_at"])
        assert aware(entry["shift_period"]["start"]) == period.start
        assert aware(entry["shift_period"]["end"]) == period.end
        assert entry["total_events"] == len(ours["tasks"])
    assert recent[0]["total_events"] == current["events_count"]
    assert len(viewer.get("/api/backlog/backlog_history").json()["history"]) >= 2  # default 10
    assert viewer.get("/api/backlog/backlog_history", params={"limit": 0}).status_code == 422


# ---- the earlier PPE agent's per-worker compliance -----------------------------------------------


def test_ppe_worker_compliance_answers_the_earlier_shape_for_a_worker_never_seen(viewer: httpx.Client) -> None:
    answer = viewer.get(f"/api/ppe/worker/{PREFIX}nobody/compliance")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["violations"], body["last_violation"], body["compliance_rate"]) == (0, None, 1.0)
    assert body["frames"] == 0


def test_ppe_worker_compliance_counts_the_frames_that_named_the_worker(
    scored: ScoredFleet, viewer: httpx.Client
) -> None:
    camera = scored.assets["ppe"][0]
    windows = [p for p in history(viewer, "ppe", limit=50) if p["asset_id"] == camera]
    assert windows, f"no ppe_vision prediction for {camera}"
    body = viewer.get(f"/api/ppe/worker/{WORKER}/compliance").json()
    frames = sum(p["frames"] for p in windows)
    violations = sum(p["frames_in_violation"] for p in windows)
    assert (body["frames"], body["violations"], body["cameras"]) == (frames, violations, [camera])
    assert body["compliance_rate"] == round(1 - violations / frames, 4)
    flagged = [p["window_end"] for p in windows if p["frames_in_violation"]]
    assert body["last_violation"] == (max(flagged) if flagged else None)
