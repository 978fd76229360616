"""The consumers of the earlier systems' outputs: a paho subscriber and a PLC reading Modbus TCP.

The subscriber follows what SEED-CLIENTS.md lists: `predictions/#` (a message per model and asset),
`alerts/#` (alerts posted by an earlier agent and alerts the platform's rules raise),
`backlogs/shift_backlog`, and commands on `factory/main/{robot_id}/cmd`. The PLC reads the
compatibility block of holding registers (function code 3, unit 1) at the earlier addresses and
finds there what the platform holds; a write to the block is refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import mean
from typing import Any

import polars as pl
import pytest
from pymodbus.client import ModbusTcpClient

from factory_pipelines.model_registry import champion_info
from factory_pipelines.planner import template_for
from factory_pipelines.simulator import Fleet, FleetConfig
from factory_pipelines.telemetry import (
    LEGACY_BACKLOG_TOPIC,
    Alert,
    Command,
    MachineTelemetry,
    Prediction,
    RobotTelemetry,
    SafetyReading,
    Severity,
    dump_payload,
    telemetry_topic,
    utc_now,
)
from tests.compat.running_platform import OPERATOR_KEY, RunningPlatform
from tests.conftest import MqttRecorder, ReceivedMessage
from tests.waiting import wait_until

PREFIX = "outc-"  # every asset this file publishes
UNIT = 1  # the earlier bridge's unit id
MODELS = ("energy_iforest", "cyber_detector", "rul_lstm", "safety_hazard", "ppe_vision")
HOT_MACHINE = f"{PREFIX}hot-01"  # four readings above 85 degC: the shipped rule machine_overheating fires
POSTED_ALERT = {
    "level": "CRITICAL",
    "type": "SPINDLE_SEIZED",
    "source": "pm_agent",  # in the earlier PM agent's name: the compatibility block's PM alert level follows it
    "details": "Spindle of line 3 seized (compat output clients)",
}


@dataclass(frozen=True)
class Scored:
    recorder: MqttRecorder
    keys: list[str]  # window keys handed over
    expected: dict[str, set[str]]  # model -> assets of this file it must have scored
    robot: RobotTelemetry  # the fleet robot's last reading
    station: SafetyReading  # the fleet safety station's last reading
    posted: dict[str, Any]  # the answer to POST /alert
    started: float  # time.monotonic() before anything was published


def fleet_readings(now: datetime) -> list[tuple[str, Any]]:
    """Three ticks, 5 s apart, of a small simulated fleet, renamed to this file's assets."""
    fleet = Fleet(FleetConfig(machines=2, robots=1, cleanrooms=0, safety_stations=1, cameras=1, seed=23))
    readings: list[tuple[str, Any]] = []
    for seconds in (10, 5, 0):
        for _topic, payload in fleet.step(now - timedelta(seconds=seconds)):
            renamed = payload.model_copy(update={"asset_id": f"{PREFIX}{payload.asset_id}"})
            readings.append((telemetry_topic("main", renamed.asset_id), renamed))
    return readings


def hot_readings(now: datetime) -> list[tuple[str, MachineTelemetry]]:
    return [
        (
            telemetry_topic("main", HOT_MACHINE),
            MachineTelemetry.model_validate(
                {
                    "asset_id": HOT_MACHINE,
                    "ts": now - timedelta(seconds=4 - n),
                    "seq": n,
                    "Temperature_C": 93.0 + n / 10,
                    "Power_Consumption_kW": 9.5,
                    "Production_Speed_units_per_hr": 300.0,
                }
            ),
        )
        for n in range(4)
    ]


def wait_live_feed(platform: RunningPlatform) -> None:
    """The API's MQTT feed connects in the background: commands go only to robots it has seen."""
    with platform.http() as api:
        wait_until(
            lambda: api.get("/api/telemetry/latest", params={"limit": 1}).json()["live"]["subscribed"],
            15,
            "the API's live feed to subscribe",
        )


@pytest.fixture(scope="module")
def scored(platform: RunningPlatform) -> Iterator[Scored]:
    """Subscribe, publish a small fleet and an overheating machine, score their windows once, post an alert."""
    recorder = MqttRecorder(
        platform.settings.mqtt_url, "predictions/#", "alerts/#", LEGACY_BACKLOG_TOPIC, "factory/main/+/cmd"
    )
    started = time.monotonic()
    wait_live_feed(platform)
    now = utc_now()
    readings = [*fleet_readings(now), *hot_readings(now)]
    with platform.device() as device:
        for topic, payload in readings:
            device.publish(topic, dump_payload(payload).decode())
    assets = {payload.asset_id for _, payload in readings}
    machines = {a for _, p in readings if isinstance(p, MachineTelemetry) and (a := p.asset_id) != HOT_MACHINE}
    robot = [p for _, p in readings if isinstance(p, RobotTelemetry)][-1]
    station = [p for _, p in readings if isinstance(p, SafetyReading)][-1]
    expected = {
        "energy_iforest": machines,
        "cyber_detector": machines,
        "rul_lstm": {robot.asset_id},
        "safety_hazard": {station.asset_id},
        "ppe_vision": {f"{PREFIX}camera-01"},
    }

    def ready(rows: pl.DataFrame) -> bool:
        return assets <= set(rows.filter(pl.col("asset_id").str.starts_with(PREFIX))["asset_id"].to_list())

    keys = platform.score(ready, "the output clients' fleet")
    with platform.http(OPERATOR_KEY) as operator:
        answer = operator.post("/alert", json=POSTED_ALERT)
    assert answer.status_code == 200, answer.text
    try:
        yield Scored(recorder, keys, expected, robot, station, answer.json(), started)
    finally:
        recorder.close()


def payloads(messages: list[ReceivedMessage], topic: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic == topic]


# ---- MQTT consumers ------------------------------------------------------------------------


def check_prediction(
    platform: RunningPlatform, scored: Scored, model: str, asset: str, version: str, run_id: str | None, raw: bytes
) -> None:
    """One message on `predictions/{model}/{asset}`: the contract's `Prediction`, with its lineage."""
    prediction = Prediction.model_validate_json(raw)
    assert (prediction.model_name, prediction.asset_id) == (model, asset)
    assert (prediction.model_version, prediction.mlflow_run_id) == (version, run_id)
    assert prediction.window_key in scored.keys
    assert prediction.window_start is not None and prediction.window_end is not None
    assert prediction.window_start < prediction.window_end <= prediction.produced_at
    run = platform.instance.get_run_by_id(prediction.dagster_run_id or "")
    assert run is not None and run.job_name == "window_predictions_job"
    assert json.loads(raw)["score"] == prediction.score  # a plain number on the wire


def test_a_prediction_per_model_and_asset_arrives_on_predictions(platform: RunningPlatform, scored: Scored) -> None:
    wanted = {f"predictions/{model}/{asset}" for model, assets in scored.expected.items() for asset in assets}
    messages = scored.recorder.wait_for(
        lambda got: wanted <= {m.topic for m in got}, 15, "a prediction per model and asset"
    )
    for model, assets in scored.expected.items():
        champion = champion_info(platform.settings.resolved_mlflow_uri, model)
        assert champion is not None
        for asset in assets:
            # one per window that held the asset's readings (they may straddle two)
            for raw in [m.payload for m in messages if m.topic == f"predictions/{model}/{asset}"]:
                check_prediction(platform, scored, model, asset, champion.version, champion.run_id, raw)
    by_label = {
        model: {
            Prediction.model_validate_json(m.payload).label
            for m in messages
            if m.topic.startswith(f"predictions/{model}/{PREFIX}")
        }
        for model in MODELS
    }
    assert by_label["energy_iforest"] <= {"normal", "anomaly"} and by_label["cyber_detector"] <= {"normal", "attack"}
    assert by_label["safety_hazard"] <= {"low", "medium", "high"}
    assert by_label["ppe_vision"] <= {"compliant", "violation"}


def overheating(alert: dict[str, Any]) -> bool:
    return alert["asset_id"] == HOT_MACHINE and alert["type"] == "MACHINE_OVERHEAT"


def test_a_posted_and_a_rule_raised_alert_arrive_on_alerts(scored: Scored) -> None:
    assert (scored.posted["status"], scored.posted["created"]) == ("handled", True)

    def mine(got: list[ReceivedMessage]) -> bool:
        critical = payloads(got, "alerts/critical")
        warning = payloads(got, "alerts/warning")
        return any(a["alert_id"] == scored.posted["alert_id"] for a in critical) and any(
            overheating(a) for a in warning
        )

    messages = scored.recorder.wait_for(mine, 15, "the posted alert and the overheating alert")
    posted = next(a for a in payloads(messages, "alerts/critical") if a["alert_id"] == scored.posted["alert_id"])
    alert = Alert.model_validate(posted)
    assert (alert.severity, alert.source, alert.type) == ("CRITICAL", "pm_agent", POSTED_ALERT["type"])
    assert alert.message == POSTED_ALERT["details"] and alert.asset_id is None
    # No earlier code for this type: the planner's own plan for a CRITICAL alert of an unknown type.
    action = template_for(POSTED_ALERT["type"], Severity.CRITICAL).action
    assert (posted["level"], posted["action"], scored.posted["action"]) == ("CRITICAL", action, action)

    hot = Alert.model_validate(next(a for a in payloads(messages, "alerts/warning") if overheating(a)))
    assert (hot.severity, hot.type, hot.window_key in scored.keys) == ("WARNING", "MACHINE_OVERHEAT", True)
    assert f"Machine {HOT_MACHINE}: temperature 93." in hot.message


def test_the_shift_backlog_arrives_on_the_earlier_topic(platform: RunningPlatform, scored: Scored) -> None:
    shift = platform.settings.shift_calendar.shift_at(datetime.now(UTC))
    asked = time.monotonic()
    platform.write_backlog(shift.key)
    # The topic is retained: a backlog written earlier arrives at subscription; ours is the one after the run.
    messages = scored.recorder.wait_for(
        lambda got: any(m.topic == LEGACY_BACKLOG_TOPIC and m.received_at >= asked for m in got),
        15,
        "the backlog on backlogs/shift_backlog",
    )
    backlog = next(
        json.loads(m.payload) for m in messages if m.topic == LEGACY_BACKLOG_TOPIC and m.received_at >= asked
    )
    start, end = shift.start.astimezone(UTC), shift.end.astimezone(UTC)
    period = backlog["shift_period"]
    assert (datetime.fromisoformat(period["start"]), datetime.fromisoformat(period["end"])) == (start, end)
    assert datetime.fromisoformat(backlog["shift_start"]) == start
    assert backlog["events_count"] == backlog["total_events"] == len(backlog["events"])
    assert datetime.fromisoformat(backlog["generated_at"]) >= datetime.now(UTC) - timedelta(minutes=5)
    with platform.http() as api:
        history = api.get("/api/backlog/backlog_history", params={"limit": 5}).json()["history"]
    assert backlog["backlog_id"] in [entry["backlog_id"] for entry in history]


def test_a_command_to_a_robot_arrives_on_its_cmd_topic(platform: RunningPlatform, scored: Scored) -> None:
    robot_id = scored.robot.asset_id
    with platform.http(OPERATOR_KEY) as operator:
        answer = operator.post(
            f"/api/robots/{robot_id}/command", json={"command": "slow", "parameters": {"factor": 0.5}}
        )
    assert answer.status_code == 202, answer.text
    sent = answer.json()
    topic = f"factory/main/{robot_id}/cmd"
    assert sent["topic"] == topic
    messages = scored.recorder.wait_for(
        lambda got: any(p["command_id"] == sent["command_id"] for p in payloads(got, topic)), 10, "the command"
    )
    [raw] = [
        m.payload for m in messages if m.topic == topic and json.loads(m.payload)["command_id"] == sent["command_id"]
    ]
    command = Command.model_validate_json(raw)
    assert (command.command, command.parameters, command.issued_by) == ("slow", {"factor": 0.5}, sent["issued_by"])


# ---- Modbus: the compatibility block -------------------------------------------------------


class Plc:
    """A PLC program's view: holding registers by the table's addresses (register N read at address N)."""

    BLOCKS = ((0, 4), (100, 5), (200, 4), (300, 4), (400, 5), (500, 4))

    def __init__(self, port: int) -> None:
        self.client = ModbusTcpClient("127.0.0.1", port=port)
        assert self.client.connect(), f"no Modbus server on 127.0.0.1:{port}"

    def read(self, address: int, count: int = 1) -> list[int]:
        response = self.client.read_holding_registers(address, count=count, device_id=UNIT)
        assert not response.isError(), f"reading {count} registers at {address}: {response}"
        return list(response.registers)

    def block(self) -> dict[int, int]:
        return {first + i: value for first, count in self.BLOCKS for i, value in enumerate(self.read(first, count))}

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def plc(platform: RunningPlatform) -> Iterator[Plc]:
    client = Plc(platform.modbus_port)
    yield client
    client.close()


def percent(fraction: float) -> int:
    """The block's scaling of a 0..1 score: x100, rounded, within 0..100 (scada_bridge/compat.py)."""
    return max(0, min(100, round(100.0 * fraction)))


def agent_status(platform: RunningPlatform, agent: str) -> dict[str, Any]:
    with platform.http() as api:
        answer = api.get(f"/api/{agent}/status")
    assert answer.status_code == 200, answer.text
    return answer.json()


SEVERITY_ORDER = ("INFO", "WARNING", "CRITICAL")


def worst(alerts: list[dict[str, Any]]) -> str | None:
    return max((a["severity"] for a in alerts), key=SEVERITY_ORDER.index, default=None)


def expected_from_rest(platform: RunningPlatform) -> dict[int, int]:
    """The registers that follow from the agents' REST status: their latest predictions and open alerts."""
    energy, cyber = agent_status(platform, "energy")["latest"], agent_status(platform, "cyber")
    safety, ppe = agent_status(platform, "safety"), agent_status(platform, "ppe")["latest"]
    out: dict[int, int] = {}
    out[101] = percent(sum(p["label"] == "normal" for p in energy) / len(energy))
    out[103] = int(any(p["label"] == "anomaly" for p in energy))
    out[104] = percent(max(p["score"] for p in energy))
    cyber_worst = worst(cyber["open_alerts"])
    out[200] = SEVERITY_ORDER.index(cyber_worst) + 1 if cyber_worst else 0
    out[201] = percent(max(p["score"] for p in cyber["latest"]))
    out[202] = sum(p["label"] == "attack" for p in cyber["latest"])
    out[203] = percent(sum(p["label"] != "attack" for p in cyber["latest"]) / len(cyber["latest"]))
    risks = [{"low": 0, "medium": 1, "high": 2}[p["label"]] for p in safety["latest"]]
    out[300] = max(risks)
    out[301] = len({p.get("zone") or p["asset_id"] for p in safety["latest"] if p["label"] in ("medium", "high")})
    out[302] = percent(1.0 - max(p["score"] for p in safety["latest"]))
    out[303] = len(safety["open_alerts"])
    frames = sum(p.get("frames") or 1.0 for p in ppe)
    violating = sum(
        p["frames_in_violation"]
        if p.get("frames_in_violation") is not None
        else (p.get("frames") or 1.0) * (p["label"] == "violation")
        for p in ppe
    )
    out[400] = percent(1.0 - violating / frames)
    out[401] = sum(p["label"] == "violation" for p in ppe)
    for address, verdict in ((403, "no_hardhat"), (404, "no_vest")):
        judged = [p for p in ppe if isinstance(p.get(verdict), bool)]
        out[address] = percent(sum(not p[verdict] for p in judged) / len(judged)) if judged else 0
    return out


def test_the_compatibility_block_holds_what_the_platform_holds(
    platform: RunningPlatform, scored: Scored, plc: Plc
) -> None:
    # The five models have predicted and a CRITICAL alert is open in the earlier PM agent's name.
    wait_until(lambda: plc.read(501) == [5] and plc.read(2) == [2], 20, "agent count 5 and the PM alert level")
    block = plc.block()
    assert (block[2], block[503]) == (2, 2)  # PM alert level critical; system status critical
    assert (block[3], block[102]) == (0, 0)  # failure probability, predicted consumption: no source
    assert 0 < block[1] <= round(scored.robot.health_score or 0)  # the lowest robot health score, ours included
    assert block[402] >= (scored.station.workers or 0)  # workers monitored, our station's included

    # Energy, cyber, safety and PPE follow the agents' latest predictions and open alerts (the bridge
    # follows MQTT and re-reads open alerts from the store now and then, hence the wait).
    def matches() -> bool:
        expected, actual = expected_from_rest(platform), plc.block()
        return all(actual[address] == value for address, value in expected.items())

    wait_until(matches, 40, "the compatibility block to match the agents' REST status")
    expected, block = expected_from_rest(platform), plc.block()
    assert {a: block[a] for a in expected} == expected
    assert block[500] == round(mean([block[1], block[101], block[203], block[302], block[400]]))  # overall health


def test_energy_consumption_is_ten_times_the_power_of_the_machines(platform: RunningPlatform, plc: Plc) -> None:
    meter = f"{PREFIX}meter-01"
    before = plc.read(100)[0]
    with platform.device() as device:
        for kw, expected in ((12.0, before + 120), (20.0, before + 200)):  # the latest power counts, not a total
            device.publish(telemetry_topic("main", meter), {"Power_Consumption_kW": kw})
            wait_until(lambda expected=expected: plc.read(100) == [expected], 10, f"consumption register at {expected}")


def test_a_write_to_the_compatibility_block_is_refused(scored: Scored, plc: Plc) -> None:
    wait_until(lambda: plc.read(2) == [2], 20, "the PM alert level")
    single = plc.client.write_register(2, 0, device_id=UNIT)
    several = plc.client.write_registers(100, [1, 2, 3], device_id=UNIT)
    for refused in (single, several):
        assert refused.isError() and refused.exception_code == 2  # illegal data address: the block is read-only
    assert plc.read(2) == [2]
