"""The earlier per-agent paths (/api/{agent}/status, /history, /health, /api/orchestrator/status) on
the real app, over a real SQLite serving store and alert book, with the session MQTT broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.alert_model import AlertCandidate, AlertRecord
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import Prediction, Severity, utc_now
from serving import create_app
from serving.paging import MAX_PAGE_SIZE
from tests.device_publisher import Publisher
from tests.waiting import wait_until

VIEWER_KEY = "viewer-key-1234"
API_KEYS = f"operator-key-123:operator,{VIEWER_KEY}:viewer"
PROBLEM_JSON = "application/problem+json"
BASE = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=1)
LATENCY = timedelta(seconds=15)  # window end -> produced_at of every test prediction
AGENT_IDS = {
    "pm": "pm_agent",
    "energy": "energy_agent",
    "cyber": "cyber_agent",
    "safety": "hazard_agent",
    "ppe": "ppe_agent",
}


def agent_settings(tmp_path: Path, mqtt_url: str, **overrides: object) -> FactorySettings:
    return load_settings(
        data_dir=tmp_path / "data",
        mqtt_url=mqtt_url,
        api_keys=API_KEYS,
        allow_anonymous_read=False,
        **overrides,
    )


@dataclass
class Plant:
    """The app under test, its store and alert book, side by side."""

    api: TestClient
    store: ServingStore
    alerts: AlertBook


@pytest.fixture
def plant(tmp_path: Path, mqtt_url: str) -> Iterator[Plant]:
    settings = agent_settings(tmp_path, mqtt_url)
    store = ServingStore(settings.resolved_db_url)
    try:
        with TestClient(create_app(settings), headers={"X-API-Key": VIEWER_KEY}) as api:
            yield Plant(api, store, AlertBook(store.engine))
    finally:
        store.dispose()


def prediction(
    model: str, asset: str, window: int, score: float, label: str, version: str = "1", **extras: Any
) -> Prediction:
    start = BASE + window * WINDOW
    return Prediction(
        model_name=model,
        model_version=version,
        asset_id=asset,
        window_key=f"collector-1-{start:%Y%m%dT%H%M%S}",
        score=score,
        label=label,
        produced_at=start + WINDOW + LATENCY,
        window_start=start,
        window_end=start + WINDOW,
        mlflow_run_id=f"run-{model}-{version}",
        dagster_run_id=f"dagster-{window}",
        **extras,
    )


def rul(asset: str, window: int, cycles: float, lower: float, version: str) -> Prediction:
    label = "rul_low" if lower < 200 else "normal"
    return prediction("rul_lstm", asset, window, cycles, label, version, rul_lower=lower, rul_upper=cycles + 300)


def candidate(
    source: str,
    type_: str,
    severity: Severity,
    asset: str,
    *,
    seen_at: datetime,
    level: str | None = None,
) -> AlertCandidate:
    return AlertCandidate(
        rule="external" if level else f"{source}_rule",
        type=type_,
        severity=severity,
        level=level,
        source=source,
        asset_id=asset,
        message=f"{type_} on {asset}",
        dedup_key=f"{source}:{type_}:{asset}",
        observed_at=seen_at,
    )


def raise_alert(alerts: AlertBook, alert: AlertCandidate) -> AlertRecord:
    return alerts.raise_or_repeat(alert, now=utc_now()).alert


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["status"] == status
    return body


def window_of(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["window_start"])


# ---- status ----


def test_every_agent_is_initializing_before_its_first_prediction(plant: Plant) -> None:
    external = raise_alert(
        plant.alerts, candidate("pm_agent", "RUL_LOW", Severity.WARNING, "R-07", seen_at=utc_now(), level="WARNING")
    )
    for agent, agent_id in AGENT_IDS.items():
        status = ok(plant.api.get(f"/api/{agent}/status"))
        assert (status["agent_id"], status["agent"], status["status"]) == (agent_id, agent, "initializing")
        assert status["predictions_made"] == 0 and status["errors"] == 0
        assert status["last_prediction"] is None and status["prediction_history"] == []
        assert status["latest"] == [] and status["model_version"] is None and status["model_versions"] == []
        assert status["metrics"] == {
            "total_predictions": 0,
            "successful_predictions": 0,
            "failed_predictions": 0,
            "average_latency_ms": 0.0,
        }
        assert status["custom_state"]["agent"] == agent
        assert status["uptime"] >= 0 and datetime.fromisoformat(status["timestamp"]).tzinfo is not None
        # An alert sent in the agent's name shows, but does not end "initializing": no prediction yet.
        expected_alerts = [external.alert_id] if agent == "pm" else []
        assert [a["alert_id"] for a in status["open_alerts"]] == expected_alerts


def test_pm_status_shows_latest_per_robot_model_version_alerts_and_state(plant: Plant) -> None:
    plant.store.upsert_predictions(
        [
            rul("R1", 0, 1500, 1200, "3"),
            rul("R1", 1, 1450, 1150, "3"),
            rul("R2", 0, 900, 700, "3"),
            rul("R2", 1, 500, 350, "3"),  # worst case under 600 cycles: the rul_declining rule, WARNING
            rul("R2", 2, 150, 100, "4"),  # rul_low: CRITICAL, the newest window, a newer version
        ]
    )
    before_alerts = ok(plant.api.get("/api/pm/status"))
    assert before_alerts["status"] == "critical"  # from R2's latest prediction alone
    assert before_alerts["open_alerts"] == []

    now = utc_now()
    r2 = raise_alert(
        plant.alerts, candidate("rul_lstm", "RUL_LOW", Severity.CRITICAL, "R2", seen_at=now - timedelta(minutes=2))
    )
    external = raise_alert(
        plant.alerts,
        candidate("pm_agent", "RUL_LOW", Severity.WARNING, "R9", seen_at=now - timedelta(minutes=1), level="WARNING"),
    )
    cleared = raise_alert(plant.alerts, candidate("rul_lstm", "RUL_LOW", Severity.WARNING, "R1", seen_at=now))
    plant.alerts.clear(cleared.alert_id, by="ana", now=utc_now())
    raise_alert(plant.alerts, candidate("energy_iforest", "ENERGY_OPTIMIZATION", Severity.WARNING, "M1", seen_at=now))

    status = ok(plant.api.get("/api/pm/status"))
    assert (status["agent_id"], status["model_name"], status["status"]) == ("pm_agent", "rul_lstm", "critical")
    assert status["predictions_made"] == 5 and status["errors"] == 0
    assert [(p["asset_id"], window_of(p)) for p in status["latest"]] == [
        ("R1", BASE + WINDOW),
        ("R2", BASE + 2 * WINDOW),
    ]
    assert status["model_version"] == "4" and status["model_versions"] == ["3", "4"]
    assert status["champion_version"] is None  # the API does not track rul_lstm's champion
    # Rule-raised (source rul_lstm) and agent-sent (source pm_agent) open alerts, most recent first.
    assert [a["alert_id"] for a in status["open_alerts"]] == [external.alert_id, r2.alert_id]
    assert status["open_alerts"][1]["severity"] == "CRITICAL" and status["open_alerts"][1]["asset_id"] == "R2"

    history = status["prediction_history"]
    assert len(history) == 5 and [window_of(e) for e in history] == sorted(window_of(e) for e in history)
    assert status["last_prediction"] == history[-1]
    last = status["last_prediction"]
    assert (last["asset_id"], last["label"], last["rul_lower"], last["model_version"]) == ("R2", "rul_low", 100, "4")
    assert (last["alert_level"], last["alert_type"], last["action"]) == (
        "CRITICAL",
        "RUL_LOW",
        "SCHEDULE_MAINTENANCE_NEXT_SHIFT",
    )
    assert datetime.fromisoformat(last["timestamp"]) == BASE + 3 * WINDOW + LATENCY  # when it was made
    by_key = {(e["asset_id"], window_of(e)): e for e in history}
    assert by_key[("R2", BASE + WINDOW)]["alert_level"] == "WARNING"
    assert by_key[("R1", BASE)]["alert_level"] == "NORMAL" and by_key[("R1", BASE)]["action"] == "LOG_ONLY"

    assert status["metrics"] == {
        "total_predictions": 5,
        "successful_predictions": 5,
        "failed_predictions": 0,
        "average_latency_ms": LATENCY.total_seconds() * 1000,
    }
    assert status["custom_state"] == {
        "agent": "pm",
        "robots_monitored": 2,
        "robots_rul_low": ["R2"],
        "lowest_rul": 150.0,
        "lowest_rul_asset": "R2",
        "maintenance": [],  # no machine sent a maintenance reading
    }
    later = ok(plant.api.get("/api/pm/status"))
    assert later["uptime"] >= status["uptime"] >= 0

    # EMERGENCY is the safety agent's status only; the others say critical.
    raise_alert(
        plant.alerts, candidate("pm_agent", "RUL_LOW", Severity.CRITICAL, "R3", seen_at=utc_now(), level="EMERGENCY")
    )
    assert ok(plant.api.get("/api/pm/status"))["status"] == "critical"


def test_safety_status_ranks_zones_and_turns_to_emergency(plant: Plant) -> None:
    plant.store.upsert_predictions(
        [
            prediction("safety_hazard", "station-1", 0, 0.05, "low", zone="zone-a"),
            prediction("safety_hazard", "station-2", 0, 0.30, "medium", zone="zone-b"),
            prediction("safety_hazard", "station-3", 0, 0.20, "medium", zone="zone-c"),
            prediction("safety_hazard", "station-3", 1, 0.70, "high", zone="zone-c"),
        ]
    )
    status = ok(plant.api.get("/api/safety/status"))
    assert (status["agent_id"], status["model_name"], status["status"]) == ("hazard_agent", "safety_hazard", "critical")
    assert status["custom_state"] == {
        "agent": "safety",
        "zones_by_risk": {"low": ["zone-a"], "medium": ["zone-b"], "high": ["zone-c"]},
    }
    assert status["predictions_made"] == 4 and len(status["latest"]) == 3
    verdicts = {(e["label"], e["alert_level"], e["action"]) for e in status["prediction_history"]}
    assert verdicts == {
        ("low", "NORMAL", "LOG_ONLY"),
        ("medium", "WARNING", "EVACUATE_ZONE"),
        ("high", "CRITICAL", "EVACUATE_ZONE"),
    }
    assert status["last_prediction"]["zone"] == "zone-c" and status["last_prediction"]["alert_type"] == "SAFETY_HAZARD"

    now = utc_now()
    hazard = raise_alert(
        plant.alerts,
        candidate("safety_hazard", "SAFETY_HAZARD", Severity.CRITICAL, "station-3", seen_at=now - timedelta(seconds=5)),
    )
    emergency = raise_alert(
        plant.alerts,
        candidate("hazard_agent", "GAS_LEAK", Severity.CRITICAL, "station-2", seen_at=now, level="EMERGENCY"),
    )
    status = ok(plant.api.get("/api/safety/status"))
    assert status["status"] == "emergency"
    assert [a["alert_id"] for a in status["open_alerts"]] == [emergency.alert_id, hazard.alert_id]
    assert status["open_alerts"][0]["level"] == "EMERGENCY"


def test_energy_status_goes_from_active_to_warning_and_shares_anomalies(plant: Plant) -> None:
    plant.store.upsert_predictions(
        [prediction("energy_iforest", asset, 0, 0.1, "normal", "2", threshold=0.5) for asset in ("M1", "M2")]
    )
    status = ok(plant.api.get("/api/energy/status"))
    assert status["status"] == "active" and status["custom_state"]["anomaly_share"] == 0.0

    plant.store.upsert_predictions([prediction("energy_iforest", "M2", 1, 0.8, "anomaly", "2", threshold=0.5)])
    status = ok(plant.api.get("/api/energy/status"))
    assert status["status"] == "warning"
    assert status["custom_state"] == {
        "agent": "energy",
        "machines_monitored": 2,
        "machines_anomalous": ["M2"],
        "anomaly_share": 0.5,
    }
    last = status["last_prediction"]
    assert (last["asset_id"], last["alert_level"], last["action"]) == ("M2", "WARNING", "ADJUST_POWER_PROFILE")
    assert last["threshold"] == 0.5


def test_cyber_and_ppe_states_and_their_actions(plant: Plant) -> None:
    plant.store.upsert_predictions(
        [
            prediction("cyber_detector", "M1", 0, 0.95, "attack", attack_type="ddos", threshold=0.6),
            prediction("cyber_detector", "M2", 0, 0.75, "attack", attack_type="scanning", threshold=0.6),
            prediction("cyber_detector", "M3", 0, 0.10, "normal", attack_type="normal", threshold=0.6),
            prediction("ppe_vision", "cam-1", 0, 0.9, "violation", zone="zone-a", frames=10, frames_in_violation=2,
                       no_hardhat=True, no_vest=False, threshold=0.5),
            prediction("ppe_vision", "cam-2", 0, 0.1, "compliant", zone="zone-a", frames=10, frames_in_violation=0,
                       no_hardhat=False, no_vest=False, threshold=0.5),
            prediction("ppe_vision", "cam-3", 0, 0.1, "compliant", zone="zone-b", frames=5, frames_in_violation=0,
                       no_hardhat=False, no_vest=False, threshold=0.5),
        ]
    )  # fmt: skip
    cyber = ok(plant.api.get("/api/cyber/status"))
    assert cyber["status"] == "critical" and cyber["agent_id"] == "cyber_agent"
    assert cyber["custom_state"] == {
        "agent": "cyber",
        "machines_monitored": 3,
        "machines_under_attack": ["M1", "M2"],
        "attack_types_seen": ["ddos", "scanning"],
    }
    actions = {e["asset_id"]: (e["alert_level"], e["action"]) for e in cyber["prediction_history"]}
    assert actions == {
        "M1": ("CRITICAL", "ISOLATE_NETWORK_SEGMENT"),
        "M2": ("WARNING", "INSPECT_NETWORK_TRAFFIC"),
        "M3": ("NORMAL", "LOG_ONLY"),
    }

    ppe = ok(plant.api.get("/api/ppe/status"))
    assert ppe["status"] == "critical" and ppe["agent_id"] == "ppe_agent"
    assert ppe["custom_state"] == {
        "agent": "ppe",
        "cameras_monitored": 3,
        "cameras_in_violation": ["cam-1"],
        "compliance_by_zone": {"zone-a": 0.9, "zone-b": 1.0},
    }
    verdicts = {e["asset_id"]: (e["alert_level"], e["action"]) for e in ppe["prediction_history"]}
    assert verdicts["cam-1"] == ("CRITICAL", "STOP_MACHINE_IMMEDIATE") and verdicts["cam-3"] == ("NORMAL", "LOG_ONLY")


# ---- history ----


def test_history_is_the_last_n_newest_last_and_refuses_a_zero_limit(plant: Plant) -> None:
    plant.store.upsert_predictions(
        [
            prediction(
                "energy_iforest", "M1", i, 0.9 if i == 11 else 0.1, "anomaly" if i == 11 else "normal", threshold=0.5
            )
            for i in range(12)
        ]
    )
    default = ok(plant.api.get("/api/energy/history"))
    assert (default["total"], default["limit"]) == (12, 10)
    assert [window_of(e) for e in default["history"]] == [BASE + i * WINDOW for i in range(2, 12)]
    newest = default["history"][-1]
    assert (newest["alert_level"], newest["alert_type"], newest["action"]) == (
        "WARNING",
        "ENERGY_OPTIMIZATION",
        "ADJUST_POWER_PROFILE",
    )
    assert datetime.fromisoformat(newest["timestamp"]) == datetime.fromisoformat(newest["produced_at"])
    assert {(e["alert_level"], e["action"]) for e in default["history"][:-1]} == {("NORMAL", "LOG_ONLY")}
    assert {"model_name", "model_version", "asset_id", "window_key", "score", "label", "threshold"} <= newest.keys()

    three = ok(plant.api.get("/api/energy/history", params={"limit": 3}))["history"]
    assert [window_of(e) for e in three] == [BASE + i * WINDOW for i in (9, 10, 11)]
    assert ok(plant.api.get("/api/pm/history"))["history"] == []  # another agent's model

    for bad in (0, -1, MAX_PAGE_SIZE + 1):
        body = assert_problem(plant.api.get("/api/energy/history", params={"limit": bad}), 422)
        assert body["errors"][0]["loc"] == ["query", "limit"]


def test_unknown_agents_are_not_found_and_fixed_paths_are_not_shadowed(plant: Plant) -> None:
    for path in ("/api/weather/status", "/api/weather/history", "/api/pmx/health", "/api/orchestrator/history"):
        assert_problem(plant.api.get(path), 404)
    # Paths other routers own keep reaching them, not the agent routes.
    for path in ("/api/cleanroom/status", "/api/robots/health"):
        response = plant.api.get(path)
        assert response.status_code != 422 and "agent_id" not in response.json()


def test_openapi_lists_the_agents_as_an_enum(plant: Plant) -> None:
    spec = ok(plant.api.get("/openapi.json"))
    for suffix in ("status", "history", "health"):
        parameters = spec["paths"][f"/api/{{agent}}/{suffix}"]["get"]["parameters"]
        agent = next(p for p in parameters if p["name"] == "agent")
        assert agent["in"] == "path"
        assert spec["components"]["schemas"][agent["schema"]["$ref"].rsplit("/", 1)[1]]["enum"] == list(AGENT_IDS)
    assert "/api/orchestrator/status" in spec["paths"]


# ---- health and the orchestrator ----


def test_agent_health_reports_the_broker(plant: Plant, tmp_path: Path, free_port: Callable[[], int]) -> None:
    for agent, agent_id in AGENT_IDS.items():
        assert ok(plant.api.get(f"/api/{agent}/health")) == {
            "status": "healthy",
            "agent_id": agent_id,
            "mqtt_connected": True,
        }
    settings = agent_settings(tmp_path / "other", f"mqtt://127.0.0.1:{free_port()}")
    with TestClient(create_app(settings), headers={"X-API-Key": VIEWER_KEY}) as api:
        assert ok(api.get("/api/ppe/health")) == {"status": "healthy", "agent_id": "ppe_agent", "mqtt_connected": False}


def test_pm_status_shows_each_machines_latest_maintenance_reading(plant: Plant, mqtt_url: str) -> None:
    """The earlier devices' `factory/machine/{id}/maintenance` reaches the pm agent's custom state."""
    sent_at = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
    device = Publisher(mqtt_url)
    try:

        def shown() -> list[dict[str, Any]]:
            # The device repeats its reading, as it does every few seconds: the API subscribes on first use.
            device.publish(
                "factory/machine/M-9/maintenance",
                {"timestamp": sent_at.timestamp(), "vibration": 4.2, "temperature": 61.5},
            )
            state = ok(plant.api.get("/api/pm/status"))["custom_state"]
            return [m for m in state["maintenance"] if m["asset_id"] == "M-9"]

        (reading,) = wait_until(shown, timeout=15, what="M-9's maintenance reading in the pm status")
    finally:
        device.close()
    assert (reading["vibration"], reading["temperature"]) == (4.2, 61.5)
    assert datetime.fromisoformat(reading["ts"]) == sent_at
    assert ok(plant.api.get("/api/energy/status"))["custom_state"].get("maintenance") is None


def test_orchestrator_status_is_nominal_until_a_critical_alert_is_open(plant: Plant) -> None:
    first = ok(plant.api.get("/api/orchestrator/status"))
    assert (first["state"], first["agent"], first["open_alerts"]) == ("nominal", "Orchestrator", 0)

    raise_alert(
        plant.alerts, candidate("energy_iforest", "ENERGY_OPTIMIZATION", Severity.WARNING, "M1", seen_at=utc_now())
    )
    assert ok(plant.api.get("/api/orchestrator/status"))["state"] == "nominal"

    critical = raise_alert(
        plant.alerts, candidate("ppe_vision", "PPE_VIOLATION", Severity.CRITICAL, "cam-1", seen_at=utc_now())
    )
    alerting = ok(plant.api.get("/api/orchestrator/status"))
    assert (alerting["state"], alerting["open_alerts"], alerting["open_critical_alerts"]) == ("alerting", 2, 1)

    plant.alerts.clear(critical.alert_id, by="ana", now=utc_now())
    assert ok(plant.api.get("/api/orchestrator/status"))["state"] == "nominal"


# ---- access and outages ----


def test_every_agent_route_needs_a_key_when_anonymous_reads_are_off(plant: Plant) -> None:
    paths = ("/api/pm/status", "/api/safety/history", "/api/energy/health", "/api/orchestrator/status")
    anonymous = TestClient(plant.api.app)
    for path in paths:
        refused = assert_problem(anonymous.get(path), 401)
        assert refused["type"].endswith("unauthenticated")
        assert anonymous.get(path, headers={"Authorization": f"Bearer {VIEWER_KEY}"}).status_code == 200
        assert anonymous.get(path, headers={"X-API-Key": "operator-key-123"}).status_code == 200
        assert_problem(anonymous.get(path, headers={"X-API-Key": "not-a-key-anyone-issued"}), 401)


def test_a_store_outage_is_503_but_agent_health_still_answers(tmp_path: Path, mqtt_url: str) -> None:
    blocker = tmp_path / "db-dir"
    blocker.write_text("a file where the database directory should be: the store cannot open")
    settings = agent_settings(tmp_path, mqtt_url, db_url=f"sqlite:///{blocker / 'serving.db'}")
    with TestClient(create_app(settings), headers={"X-API-Key": VIEWER_KEY}) as api:
        for path in ("/api/pm/status", "/api/safety/history", "/api/orchestrator/status"):
            response = api.get(path)
            assert assert_problem(response, 503)["title"] == "Serving store unavailable"
            assert response.headers["retry-after"]
        assert ok(api.get("/api/pm/health"))["mqtt_connected"] is True

        blocker.unlink()  # the store comes back, without a restart
        assert ok(api.get("/api/pm/status"))["status"] == "initializing"


def test_ppe_worker_compliance_tallies_the_frames_that_named_the_worker(plant: Plant) -> None:
    now = utc_now().replace(microsecond=0)

    def seen(camera: str, minutes_ago: int, workers: dict[str, tuple[int, int]]) -> Prediction:
        start = now - timedelta(minutes=minutes_ago)
        return Prediction(
            model_name="ppe_vision",
            model_version="3",
            asset_id=camera,
            window_key=f"collector-1-{start:%Y%m%dT%H%M%S}",
            score=0.5,
            label="violation" if any(bad for _, bad in workers.values()) else "compliant",
            produced_at=start + WINDOW + LATENCY,
            window_start=start,
            window_end=start + WINDOW,
            workers=[
                {"worker_id": worker, "frames": n, "frames_in_violation": bad} for worker, (n, bad) in workers.items()
            ],
        )

    plant.store.upsert_predictions(
        [
            seen("cam-1", 30, {"W-7": (10, 2), "W-8": (5, 0)}),
            seen("cam-2", 20, {"W-7": (6, 0)}),
            seen("cam-1", 10, {"W-7": (4, 1), "W-8": (5, 0)}),
            seen("cam-2", 5, {"W-8": (3, 0)}),
            seen("cam-1", 60 * 30, {"W-7": (50, 50)}),  # 30 h ago: outside the default 24 h
        ]
    )
    w7 = ok(plant.api.get("/api/ppe/worker/W-7/compliance"))
    assert (w7["violations"], w7["frames"], w7["windows"], w7["cameras"]) == (3, 20, 3, ["cam-1", "cam-2"])
    assert w7["compliance_rate"] == 0.85
    assert datetime.fromisoformat(w7["last_violation"]) == now - timedelta(minutes=10) + WINDOW
    assert datetime.fromisoformat(w7["last_seen"]) == now - timedelta(minutes=10) + WINDOW

    longer = ok(plant.api.get("/api/ppe/worker/W-7/compliance", params={"hours": 48}))
    assert (longer["violations"], longer["frames"]) == (53, 70)

    w8 = ok(plant.api.get("/api/ppe/worker/W-8/compliance"))
    assert (w8["violations"], w8["last_violation"], w8["compliance_rate"], w8["frames"]) == (0, None, 1.0, 13)
    nobody = ok(plant.api.get("/api/ppe/worker/W-99/compliance"))
    assert (nobody["violations"], nobody["last_violation"], nobody["compliance_rate"], nobody["frames"]) == (
        0,
        None,
        1.0,
        0,
    )
    assert_problem(plant.api.get("/api/ppe/worker/W-7/compliance", params={"hours": 0}), 422)
