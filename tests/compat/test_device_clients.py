"""The plant's existing devices (SEED-CLIENTS.md, "MQTT that existing devices and consumers use", Inputs).

A paho client publishes each earlier payload as those devices do: JSON at QoS 0, no `seq`, usually
no asset id (the topic names the asset). Each reading then shows up at the REST calls that serve its
kind of asset: at once on the live routes, and as predictions once the window holding it is sealed
and handed over. A malformed message goes to the dead-letter file with its reason and the stream goes on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import polars as pl
import pytest

from factory_pipelines.model_registry import champion_info
from tests.compat.running_platform import RunningPlatform
from tests.waiting import wait_until

ROBOT = "devc-robot-01"
ROBOT_PAYLOAD = {"temperature": 45.2, "vibration": {"rms": 0.35}, "health_score": 85}  # SEED-CLIENTS.md's example
MACHINE_NUMBER = 9417  # the plant export names machines by number
MACHINE = str(MACHINE_NUMBER)
PLANT_ENERGY = "plant-energy"  # fixed ids of the site's energy and network stats: only this file publishes them
PLANT_NETWORK = "plant-network"
NOISY_ROBOT = "devc-robot-02"  # sends two malformed messages, then a good one
CURRENT_LOAD_KW = 412.5
LATENCY_MS, PACKET_LOSS_PCT = 18.5, 0.4
MAINTENANCE_VIBRATION, MAINTENANCE_TEMPERATURE = 2.4, 63.0
GOOD_AFTER_BAD = {"temperature": 50.5, "health_score": 64}
NOT_JSON = '{"temperature": 51.0, "health_score":'
NOT_A_NUMBER = {"temperature": "hot", "health_score": 70}


def robot_topic(robot_id: str) -> str:
    return f"factory/main/{robot_id}/telemetry"


MACHINE_TOPIC = f"factory/machine/{MACHINE}/telemetry"
MAINTENANCE_TOPIC = f"factory/machine/{MACHINE}/maintenance"


def export_row(epoch: int) -> dict[str, Any]:
    """One row of the plant export as the earlier CSV publisher sent it: `Timestamp` replaced by an epoch."""
    return {
        "timestamp": epoch,
        "Machine_ID": MACHINE_NUMBER,
        "Operation_Mode": "Active",
        "Temperature_C": 61.3,
        "Vibration_Hz": 38.2,
        "Power_Consumption_kW": 7.45,
        "Network_Latency_ms": 22.4,
        "Packet_Loss_%": 0.62,
        "Quality_Control_Defect_Rate_%": 3.1,
        "Production_Speed_units_per_hr": 412.0,
        "Predictive_Maintenance_Score": 0.71,
        "Error_Rate_%": 4.2,
        "Efficiency_Status": "Medium",
    }


# (asset, kind) of every row the module's devices leave in the windows
EXPECTED_ROWS = {
    (ROBOT, "robot"),
    (MACHINE, "machine"),
    (MACHINE, "maintenance"),
    (PLANT_ENERGY, "energy_stats"),
    (PLANT_NETWORK, "network_stats"),
    (NOISY_ROBOT, "robot"),
}


def live_routes_follow_mqtt(platform: RunningPlatform) -> None:
    """Wait until the API's live feed has its subscriptions, as its answers say (`live.subscribed`).

    The feed connects in the background when the API starts: a reading published before it
    subscribed never reaches the live routes (devices publish QoS 0, and the broker keeps nothing).
    """
    with platform.http() as api:
        wait_until(
            lambda: api.get("/api/telemetry/latest", params={"limit": 1}).json()["live"]["subscribed"],
            15,
            "the API's live feed to subscribe",
        )


@dataclass(frozen=True)
class Published:
    epoch: int  # the epoch `timestamp` every timed device sent
    keys: list[str]  # the window keys handed over
    rows: pl.DataFrame  # this module's rows in those windows


@pytest.fixture(scope="module")
def published(platform: RunningPlatform) -> Published:
    """Every device publishes once; then the windows holding it all are sealed and scored once."""
    live_routes_follow_mqtt(platform)
    epoch = int(time.time()) - 1
    with platform.device() as device:
        device.publish(robot_topic(ROBOT), ROBOT_PAYLOAD)
        device.publish(MACHINE_TOPIC, export_row(epoch))
        maintenance = {"timestamp": epoch, "vibration": MAINTENANCE_VIBRATION, "temperature": MAINTENANCE_TEMPERATURE}
        device.publish(MAINTENANCE_TOPIC, maintenance)
        device.publish("factory/energy/stats", {"timestamp": epoch, "current_load": CURRENT_LOAD_KW})
        network = {"timestamp": epoch, "latency": LATENCY_MS, "packet_loss": PACKET_LOSS_PCT}
        device.publish("factory/network/stats", network)
        device.publish(robot_topic(NOISY_ROBOT), NOT_JSON)
        device.publish(robot_topic(NOISY_ROBOT), NOT_A_NUMBER)
        device.publish(robot_topic(NOISY_ROBOT), GOOD_AFTER_BAD)

    seen: dict[str, pl.DataFrame] = {}

    def ready(rows: pl.DataFrame) -> bool:
        mine = rows.filter(pl.col("asset_id").is_in([a for a, _ in EXPECTED_ROWS]))
        if not set(zip(mine["asset_id"], mine["kind"], strict=True)) >= EXPECTED_ROWS:
            return False
        seen["rows"] = mine
        return True

    keys = platform.score(ready, "every earlier device's reading")
    return Published(epoch, keys, seen["rows"])


@pytest.fixture
def api(platform: RunningPlatform) -> Iterator[httpx.Client]:
    with platform.http() as client:
        yield client


def at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def parsed(value: str) -> datetime:
    return datetime.fromisoformat(value)


def latest_of(api: httpx.Client, asset_id: str) -> dict[str, dict[str, Any]]:
    """`GET /api/telemetry/latest?asset_id=` by kind."""
    answer = api.get("/api/telemetry/latest", params={"asset_id": asset_id})
    assert answer.status_code == 200, answer.text
    return {item["kind"]: item for item in answer.json()["items"]}


def prediction_of(api: httpx.Client, agent: str, asset_id: str) -> dict[str, Any] | None:
    """The asset's entry in `GET /api/{agent}/status` `latest`."""
    answer = api.get(f"/api/{agent}/status")
    assert answer.status_code == 200, answer.text
    return next((p for p in answer.json()["latest"] if p["asset_id"] == asset_id), None)


def champion_version(platform: RunningPlatform, model: str) -> str:
    champion = champion_info(platform.settings.resolved_mlflow_uri, model)
    assert champion is not None, f"no {model} champion"
    return champion.version


# ---- robots --------------------------------------------------------------------------------


def test_a_robot_reading_without_id_or_seq_shows_at_the_robot_routes(published: Published, api: httpx.Client) -> None:
    row = published.rows.filter(pl.col("asset_id") == ROBOT).row(0, named=True)
    assert (row["kind"], row["site"], row["topic"], row["seq"]) == ("robot", "main", robot_topic(ROBOT), None)
    assert json.loads(row["payload"])["vibration"] == {"rms": 0.35}

    robot = api.get(f"/api/robots/{ROBOT}")
    assert robot.status_code == 200, robot.text
    body = robot.json()
    assert (body["robot_id"], body["health_score"], body["health_source"]) == (ROBOT, 85.0, "device")
    telemetry = body["telemetry"]
    assert (telemetry["asset_id"], telemetry["temperature"], telemetry["vibration"]["rms"]) == (ROBOT, 45.2, 0.35)
    assert telemetry["motor_current"] is None and telemetry["cycle_count"] is None  # not measured: absent, not 0
    assert body["maintenance_priority"] == "low"  # health 85, no RUL yet: nothing urgent

    listed = api.get("/api/robots", params={"limit": 1000}).json()["items"]
    mine = [r for r in listed if r["robot_id"] == ROBOT]
    assert len(mine) == 1 and mine[0]["health_score"] == 85.0 and mine[0]["telemetry"]["temperature"] == 45.2

    item = latest_of(api, ROBOT)["robot"]
    assert (item["asset_id"], item["topic"]) == (ROBOT, robot_topic(ROBOT))
    reading = item["reading"]
    assert {k: v for k, v in reading.items() if k != "ts"} == {"asset_id": ROBOT, "kind": "robot", **ROBOT_PAYLOAD}
    assert parsed(reading["ts"]) <= parsed(item["received_at"])  # no time sent: the time of receipt


# ---- cleanroom -----------------------------------------------------------------------------


def cleanroom_main(api: httpx.Client) -> dict[str, Any] | None:
    answer = api.get("/api/cleanroom/status")
    assert answer.status_code == 200, answer.text
    return next((room for room in answer.json()["cleanrooms"] if room["asset_id"] == "cleanroom-main"), None)


def test_cleanroom_readings_under_either_name_show_at_the_cleanroom_status(
    platform: RunningPlatform, api: httpx.Client
) -> None:
    contract_names = {
        "particles_per_m3": {"0.3": 9100.0, "0.5": 2950.0, "5.0": 21.0},
        "temperature": 21.8,
        "humidity": 58.5,  # above 55 %: out of limits
        "differential_pressure_pa": 11.0,
    }
    earlier_names = {"particles": 180.5, "airflow": 0.5, "humidity": 44.0, "temperature": 21.4, "pressure": 12.5}
    with platform.device() as device:
        device.publish("cleanroom/main/status", contract_names)
        room = wait_until(
            lambda: (r := cleanroom_main(api)) and r["humidity"] == 58.5 and r, 10, "the cleanroom reading, our names"
        )
        assert room["particles_per_m3"] == contract_names["particles_per_m3"]
        assert (room["temperature"], room["differential_pressure_pa"], room["iso_class"]) == (21.8, 11.0, None)
        assert room["within_limits"] is False and room["violations"] == ["humidity 58.5 outside 30..55"]

        # The earlier edge agent's names: one particle count (taken at >= 0.5 um) and `pressure`.
        device.publish("cleanroom/main/status", earlier_names)
        room = wait_until(
            lambda: (r := cleanroom_main(api)) and r["humidity"] == 44.0 and r, 10, "the reading, earlier names"
        )
    assert room["particles_per_m3"] == {"0.5": 180.5}
    assert (room["temperature"], room["differential_pressure_pa"]) == (21.4, 12.5)
    assert room["within_limits"] is True and room["violations"] == []
    reading = latest_of(api, "cleanroom-main")["cleanroom"]["reading"]
    assert (reading["particles"], reading["airflow"], reading["pressure"]) == (180.5, 0.5, 12.5)  # kept as sent


# ---- machines: the plant-export row and the maintenance reading ------------------------------


def test_a_plant_export_row_is_scored_by_energy_and_cyber_within_one_window(
    platform: RunningPlatform, published: Published, api: httpx.Client
) -> None:
    row = published.rows.filter((pl.col("asset_id") == MACHINE) & (pl.col("kind") == "machine")).row(0, named=True)
    assert row["ts"] == at(published.epoch) and row["seq"] is None  # the epoch it sent is the row's time
    stored = json.loads(row["payload"])
    assert (stored["Machine_ID"], stored["Power_Consumption_kW"], stored["Packet_Loss_%"]) == (MACHINE, 7.45, 0.62)

    for agent, model in (("energy", "energy_iforest"), ("cyber", "cyber_detector")):
        champion = champion_version(platform, model)
        prediction = prediction_of(api, agent, MACHINE)
        assert prediction is not None, f"no {model} prediction for machine {MACHINE} at /api/{agent}/status"
        assert prediction["model_name"] == model and prediction["model_version"] == champion
        assert prediction["window_key"] in published.keys
        status = api.get(f"/api/{agent}/status").json()
        assert champion in status["model_versions"] and status["status"] != "initializing"
        assert status["champion_version"] in (None, champion)
    energy = prediction_of(api, "energy", MACHINE)
    assert energy is not None and energy["label"] in ("normal", "anomaly") and energy["score"] > 0

    latest = api.get("/predictions/latest", params={"model": "energy_iforest", "asset_id": MACHINE})
    assert latest.status_code == 200, latest.text
    [item] = latest.json()["items"]
    assert (item["asset_id"], item["model_version"]) == (MACHINE, champion_version(platform, "energy_iforest"))
    assert item["window_key"] in published.keys

    machine = latest_of(api, MACHINE)["machine"]["reading"]
    assert (machine["Machine_ID"], machine["Temperature_C"], parsed(machine["ts"])) == (
        MACHINE,
        61.3,
        at(published.epoch),
    )


def test_a_maintenance_reading_shows_as_the_machines_latest(published: Published, api: httpx.Client) -> None:
    rows = published.rows.filter((pl.col("asset_id") == MACHINE) & (pl.col("kind") == "maintenance"))
    assert rows.height == 1 and rows["ts"][0] == at(published.epoch)
    item = latest_of(api, MACHINE)["maintenance"]
    assert (item["topic"], item["asset_id"]) == (MAINTENANCE_TOPIC, MACHINE)
    reading = item["reading"]
    assert (reading["vibration"], reading["temperature"], parsed(reading["ts"])) == (
        MAINTENANCE_VIBRATION,
        MAINTENANCE_TEMPERATURE,
        at(published.epoch),
    )


def test_the_pm_status_lists_the_latest_maintenance_reading_per_machine(
    published: Published, api: httpx.Client
) -> None:
    def entry() -> dict[str, Any] | None:
        state = api.get("/api/pm/status").json()["custom_state"]
        return next((m for m in state.get("maintenance") or [] if m["asset_id"] == MACHINE), None)

    found = wait_until(entry, 10, f"machine {MACHINE} in /api/pm/status custom_state.maintenance")
    assert (found["vibration"], found["temperature"], parsed(found["ts"])) == (
        MAINTENANCE_VIBRATION,
        MAINTENANCE_TEMPERATURE,
        at(published.epoch),
    )


# ---- the plant's energy and network stats ---------------------------------------------------


def test_energy_and_network_stats_show_as_the_plant_assets(published: Published, api: httpx.Client) -> None:
    energy = latest_of(api, PLANT_ENERGY)["energy_stats"]
    assert (energy["topic"], energy["reading"]["current_load"]) == ("factory/energy/stats", CURRENT_LOAD_KW)
    network = latest_of(api, PLANT_NETWORK)["network_stats"]
    assert network["topic"] == "factory/network/stats"
    assert (network["reading"]["latency"], network["reading"]["packet_loss"]) == (LATENCY_MS, PACKET_LOSS_PCT)
    for asset_id, kind in ((PLANT_ENERGY, "energy_stats"), (PLANT_NETWORK, "network_stats")):
        rows = published.rows.filter(pl.col("asset_id") == asset_id)
        assert rows["kind"].to_list() == [kind] and rows["ts"][0] == at(published.epoch)


@pytest.mark.parametrize(
    ("agent", "asset_id", "model", "labels"),
    [
        ("energy", PLANT_ENERGY, "energy_iforest", {"normal", "anomaly"}),  # current_load as the asset's power
        ("cyber", PLANT_NETWORK, "cyber_detector", {"normal", "attack"}),  # latency and packet loss
    ],
)
def test_the_plants_stats_are_scored_within_one_window(
    platform: RunningPlatform,
    published: Published,
    api: httpx.Client,
    agent: str,
    asset_id: str,
    model: str,
    labels: set[str],
) -> None:
    prediction = prediction_of(api, agent, asset_id)
    assert prediction is not None, f"no {model} prediction for {asset_id} at /api/{agent}/status"
    assert prediction["model_version"] == champion_version(platform, model)
    assert prediction["window_key"] in published.keys and prediction["label"] in labels


# ---- malformed payloads ---------------------------------------------------------------------


def dead_letters(platform: RunningPlatform, topic: str) -> list[dict[str, Any]]:
    lines = [
        json.loads(line)
        for path in sorted(platform.settings.dead_letter_dir.glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    return [entry for entry in lines if entry.get("topic") == topic]


def test_malformed_payloads_go_to_the_dead_letter_file_and_the_stream_goes_on(
    platform: RunningPlatform, published: Published, api: httpx.Client
) -> None:
    topic = robot_topic(NOISY_ROBOT)
    entries = wait_until(lambda: len(found := dead_letters(platform, topic)) >= 2 and found, 10, "two dead letters")
    by_payload = {entry["payload"]: entry["reason"] for entry in entries}
    assert set(by_payload) == {NOT_JSON, json.dumps(NOT_A_NUMBER)}
    assert by_payload[NOT_JSON].startswith("not valid JSON")
    not_a_number = by_payload[json.dumps(NOT_A_NUMBER)]
    assert not_a_number.startswith("invalid robot payload") and "temperature" in not_a_number

    # Only the good message is in the windows, and the routes show it: the stream went on.
    rows = published.rows.filter(pl.col("asset_id") == NOISY_ROBOT)
    assert rows.height == 1 and json.loads(rows["payload"][0])["health_score"] == 64
    robot = api.get(f"/api/robots/{NOISY_ROBOT}").json()
    assert (robot["health_score"], robot["telemetry"]["temperature"]) == (64.0, 50.5)
    assert platform.collector.alive()
