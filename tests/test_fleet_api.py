"""Robots, cleanroom, latest telemetry and commands over REST, fed by the session MQTT broker and a
real SQLite serving store: live telemetry (ours and legacy devices'), RUL and priority from a stored
rul_lstm prediction, commands with roles, the asset's acknowledgement, malformed payloads, and a
broker that is down. Each test uses a site of its own, so no test sees another's telemetry."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient

from factory_pipelines.command_book import CommandBook, CommandStatus
from factory_pipelines.mqtt import connect_and_wait, make_client
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import (
    Command,
    CommandAck,
    Prediction,
    cleanroom_topic,
    command_topic,
    telemetry_topic,
    utc_now,
)
from serving import create_app
from serving.fleet import live_of, maintenance_priority
from tests.conftest import MqttRecorder
from tests.waiting import wait_until

OPERATOR = {"X-API-Key": "operator-key-123"}
VIEWER = {"X-API-Key": "viewer-key-1234"}
PROBLEM_JSON = "application/problem+json"


def fleet_settings(tmp_path: Path, mqtt_url: str, site: str) -> FactorySettings:
    return load_settings(
        data_dir=tmp_path / "data",
        mqtt_url=mqtt_url,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        site=site,
        api_keys="operator-key-123:operator,viewer-key-1234:viewer",
        allow_anonymous_read=False,
    )


@pytest.fixture
def site() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@dataclass
class Fleet:
    """The API under test, the store it reads, and a device-side MQTT publisher for the test's site."""

    api: TestClient
    store: ServingStore
    publisher: mqtt.Client
    site: str

    def publish(self, topic: str, payload: dict[str, Any] | bytes) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self.publisher.publish(topic, raw, qos=1)
        info.wait_for_publish(10)
        assert info.is_published(), f"broker did not take the message on {topic}"

    def robot(self, robot_id: str, payload: dict[str, Any] | bytes) -> None:
        self.publish(telemetry_topic(self.site, robot_id), payload)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.api.get(path, params=params, headers=VIEWER)


def start_fleet(tmp_path: Path, mqtt_url: str, site: str) -> Iterator[Fleet]:
    settings = fleet_settings(tmp_path, mqtt_url, site)
    settings.ensure_dirs()
    app = create_app(settings)
    store = ServingStore(settings.resolved_db_url)
    publisher = make_client(f"test-device-{uuid.uuid4().hex[:8]}")
    connect_and_wait(publisher, mqtt_url)
    try:
        with TestClient(app) as api:
            fleet = Fleet(api, store, publisher, site)
            live = wait_until(
                lambda: (feed := fleet.get("/api/telemetry/latest").json()["live"])["subscribed"] and feed,
                what="live feed subscribed",
            )
            assert live["connected"] is True and live["rejected"] == 0
            yield fleet
    finally:
        app.state.serving.live.close()  # also closed by the app's shutdown; twice is harmless
        publisher.disconnect()
        publisher.loop_stop()
        store.dispose()


@pytest.fixture
def fleet(tmp_path: Path, mqtt_url: str, site: str) -> Iterator[Fleet]:
    yield from start_fleet(tmp_path, mqtt_url, site)


def rul_prediction(robot_id: str, rul: float, lower: float, upper: float, *, version: str = "3") -> Prediction:
    start = utc_now().replace(microsecond=0) - timedelta(minutes=1)
    return Prediction(
        model_name="rul_lstm",
        model_version=version,
        asset_id=robot_id,
        window_key=f"{start:%Y%m%dT%H%M%S}-c1-0",
        score=rul,
        label="rul_low" if lower < 200 else "normal",
        produced_at=utc_now(),
        window_start=start,
        window_end=start + timedelta(minutes=1),
        mlflow_run_id="run-abc",
        rul_lower=lower,
        rul_upper=upper,
        confidence=0.9,
    )


def robot_payload(robot_id: str, seq: int, *, health: float, temperature: float = 41.0) -> dict[str, Any]:
    return {
        "asset_id": robot_id,
        "ts": utc_now().isoformat(),
        "seq": seq,
        "vibration": {"rms": 0.04, "kurtosis": 3.1, "bpfo": 0.001, "bpfi": 0.0005, "bsf": 0.0002, "ftf": 0.0001},
        "temperature": temperature,
        "motor_current": 4.9,
        "cycle_count": 1200 + seq,
        "health_score": health,
        "state": "running",
    }


def robots_by_id(fleet: Fleet) -> dict[str, dict[str, Any]]:
    return {r["robot_id"]: r for r in fleet.get("/api/robots").json()["items"]}


def test_robots_combine_live_telemetry_with_rul_and_priority(fleet: Fleet) -> None:
    fleet.store.upsert_predictions(
        [rul_prediction("R-1", 420.0, 150.0, 690.0), rul_prediction("R-3", 5200.0, 4100.0, 6300.0, version="2")]
    )
    followed: list[tuple[str, str]] = []
    failures: list[str] = []

    def failing_follower(kind: str, asset_id: str, _model: object) -> None:
        failures.append(asset_id)
        raise RuntimeError("a follower that breaks")

    live = live_of(fleet.api.app)  # type: ignore[arg-type]
    live.subscribe(lambda kind, asset_id, _model: followed.append((kind.value, asset_id)))
    live.subscribe(failing_follower)

    fleet.robot("R-1", robot_payload("R-1", 1, health=82.5))
    fleet.robot("R-2", {"temperature": 45.2, "vibration": {"rms": 0.35}})  # a legacy device: no id, ts, seq, health
    robots = wait_until(
        lambda: {"R-1", "R-2"} <= (found := robots_by_id(fleet)).keys() and found, what="R-1 and R-2 listed"
    )

    assert sorted(robots) == ["R-1", "R-2", "R-3"]  # R-3 only has a stored prediction
    r1 = robots["R-1"]
    assert r1["health_score"] == 82.5 and r1["health_source"] == "device"
    assert r1["telemetry"]["seq"] == 1 and r1["telemetry"]["vibration"]["kurtosis"] == 3.1 and r1["state"] == "running"
    assert r1["rul"] | {"rul_cycles": 420.0, "rul_lower": 150.0, "rul_upper": 690.0, "confidence": 0.9} == r1["rul"]
    assert r1["rul"]["model_version"] == "3" and r1["rul"]["mlflow_run_id"] == "run-abc"
    assert r1["maintenance_priority"] == "critical"  # worst case 150 cycles < 200: replace now
    assert r1["online"] is True and r1["last_seen"].endswith("+00:00")

    r2 = robots["R-2"]
    assert r2["telemetry"]["seq"] is None and r2["telemetry"]["asset_id"] == "R-2"  # id from the topic
    assert r2["health_source"] == "derived" and 80 < r2["health_score"] < 90  # rms 0.35 g, 45.2 degC
    assert r2["rul"] is None and r2["maintenance_priority"] == "low"

    r3 = robots["R-3"]
    assert r3["telemetry"] is None and r3["last_seen"] is None and r3["online"] is False
    assert r3["rul"]["model_version"] == "2" and r3["maintenance_priority"] == "low"

    listing = fleet.get("/api/robots", limit=2).json()
    assert [r["robot_id"] for r in listing["items"]] == ["R-1", "R-2"] and listing["next_offset"] == 2
    assert listing["total"] == 3 and listing["live"]["connected"] is True and listing["warnings"] == []
    critical = fleet.get("/api/robots", priority="critical").json()
    assert [r["robot_id"] for r in critical["items"]] == ["R-1"]

    one = fleet.get("/api/robots/R-2")
    assert one.status_code == 200 and one.json()["health_score"] == r2["health_score"]
    assert fleet.get("/api/robots/R-3").json()["rul"]["rul_lower"] == 4100.0
    missing = fleet.get("/api/robots/R-404")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith(PROBLEM_JSON)
    assert "R-404" in missing.json()["detail"]

    # A worn bearing shows on the next reading: the device's health falls, the priority follows.
    fleet.robot("R-2", {"temperature": 46.0, "vibration": {"rms": 0.4}, "health_score": 42})
    wait_until(lambda: fleet.get("/api/robots/R-2").json()["maintenance_priority"] == "high", what="R-2 high")
    assert ("robot", "R-1") in followed and ("robot", "R-2") in followed
    assert failures == ["R-1"]  # the failing follower was dropped after its first failure


def test_the_live_feed_follows_mqtt_from_the_apis_start(tmp_path: Path, mqtt_url: str, site: str) -> None:
    """A device that publishes before anyone asks a live route is still served (the feed starts with the app)."""
    settings = fleet_settings(tmp_path, mqtt_url, site)
    settings.ensure_dirs()
    app = create_app(settings)
    publisher = make_client(f"test-device-{uuid.uuid4().hex[:8]}")
    connect_and_wait(publisher, mqtt_url)
    try:
        with TestClient(app) as api:
            assert app.state.serving.live.wait_ready(15), "the live feed did not subscribe at start-up"
            payload = json.dumps(robot_payload("R-early", 1, health=77))
            info = publisher.publish(telemetry_topic(site, "R-early"), payload)
            info.wait_for_publish(10)
            robot = wait_until(
                lambda: (answer := api.get("/api/robots/R-early", headers=VIEWER)).status_code == 200 and answer.json(),
                what="the robot that published first",
            )
            assert robot["health_score"] == 77
    finally:
        publisher.disconnect()
        publisher.loop_stop()


def test_reads_need_a_key_when_anonymous_reading_is_off(fleet: Fleet) -> None:
    assert fleet.api.get("/api/robots").status_code == 401
    assert fleet.api.get("/api/cleanroom/status").status_code == 401
    assert fleet.api.get("/api/robots", headers=OPERATOR).status_code == 200


def test_a_command_is_sent_and_settled_by_the_robots_acknowledgement(
    fleet: Fleet, mqtt_recorder: Callable[..., MqttRecorder]
) -> None:
    fleet.robot("R-7", robot_payload("R-7", 1, health=95.0))
    wait_until(lambda: fleet.get("/api/robots/R-7").status_code == 200, what="R-7 seen")
    commands = mqtt_recorder(command_topic(fleet.site, "R-7"))
    body = {"command": "slow", "parameters": {"factor": 0.5}}

    anonymous = fleet.api.post("/api/robots/R-7/command", json=body)
    assert anonymous.status_code == 401 and anonymous.headers["content-type"].startswith(PROBLEM_JSON)
    assert fleet.api.post("/api/robots/R-7/command", json=body, headers=VIEWER).status_code == 403
    unknown = fleet.api.post("/api/robots/R-404/command", json=body, headers=OPERATOR)
    assert unknown.status_code == 404
    assert fleet.api.post("/api/robots/R-7/command", json={"parameters": {}}, headers=OPERATOR).status_code == 422

    accepted = fleet.api.post("/api/robots/R-7/command", json=body, headers=OPERATOR)
    assert accepted.status_code == 202, accepted.text
    sent = accepted.json()
    assert sent["status"] == "sent" and sent["robot_id"] == "R-7" and sent["topic"] == f"factory/{fleet.site}/R-7/cmd"
    assert sent["issued_by"] == "settings key 1" and sent["parameters"] == {"factor": 0.5}

    received = commands.wait_for(lambda msgs: len(msgs) >= 1, what="command on the broker")
    assert len(received) == 1  # the refused calls published nothing
    command = Command.model_validate_json(received[0].payload)
    assert command.command_id == sent["command_id"] and command.command == "slow"
    assert command.parameters == {"factor": 0.5} and command.issued_by == "settings key 1"
    pending = fleet.get(f"/api/commands/{command.command_id}").json()
    assert pending["status"] == "sent" and pending["acked_at"] is None

    ack = CommandAck(
        asset_id="R-7",
        ts=utc_now(),
        seq=2,
        command_id=command.command_id,
        command="slow",
        status="done",
        detail="running at 0.5 of nominal speed",
    )
    fleet.robot("R-7", ack.model_dump(mode="json"))
    done = wait_until(
        lambda: (c := fleet.get(f"/api/commands/{command.command_id}").json())["status"] == "done" and c,
        what="command settled",
    )
    assert done["detail"] == "running at 0.5 of nominal speed" and done["acked_at"] is not None
    assert done["issued_by"] == "settings key 1" and done["command"] == "slow"

    # A redelivered or contradicting ack changes nothing; an ack for a command sent around us is kept.
    fleet.robot("R-7", ack.model_copy(update={"status": "rejected", "detail": "late"}).model_dump(mode="json"))
    orphan_id = uuid.uuid4().hex
    orphan = {"command_id": orphan_id, "command": "stop", "status": "rejected", "detail": "e-stop engaged"}
    fleet.robot("R-7", orphan)  # legacy style: no kind, id from the topic
    kept = wait_until(lambda: (r := fleet.get(f"/api/commands/{orphan_id}")).status_code == 200 and r.json())
    assert kept["status"] == "rejected" and kept["issued_at"] is None and kept["robot_id"] == "R-7"
    assert fleet.get(f"/api/commands/{command.command_id}").json()["status"] == "done"  # acks are handled in order
    latest_ack = fleet.get("/api/telemetry/latest", kind="command_ack", asset_id="R-7").json()["items"]
    assert [item["reading"]["command_id"] for item in latest_ack] == [orphan_id]

    assert fleet.get(f"/api/commands/{uuid.uuid4().hex}").status_code == 404


def test_cleanroom_status_checks_each_room_against_its_limits(fleet: Fleet) -> None:
    particles = {"0.3": 10200.0, "0.5": 3500.0, "1.0": 830.0, "5.0": 29.0}
    assert fleet.get("/api/cleanroom/status").json()["status"] == "no_data"
    # The site's monitor as legacy devices send it (no id: from the topic), then a second room, out of limits.
    fleet.publish(
        cleanroom_topic(fleet.site),
        {
            "particles_per_m3": particles,
            "iso_class": 4.6,
            "temperature": 21.1,
            "humidity": 44.0,
            "differential_pressure_pa": 12.4,
        },
    )
    fleet.publish(
        cleanroom_topic(fleet.site),
        {"asset_id": "CR-2", "iso_class": 6.2, "humidity": 61.0, "differential_pressure_pa": 3.0},
    )
    overview = wait_until(
        lambda: len((o := fleet.get("/api/cleanroom/status").json())["cleanrooms"]) == 2 and o,
        what="two cleanrooms",
    )
    assert overview["status"] == "out_of_limits"
    rooms = {room["asset_id"]: room for room in overview["cleanrooms"]}
    main = rooms[f"cleanroom-{fleet.site}"]
    assert main["within_limits"] is True and main["violations"] == [] and main["particles_per_m3"] == particles
    assert main["iso_class"] == 4.6 and main["last_seen"].endswith("+00:00")
    second = rooms["CR-2"]
    assert second["within_limits"] is False and second["temperature"] is None
    assert {v.split()[0] for v in second["violations"]} == {"iso_class", "humidity", "differential_pressure_pa"}
    assert {c["name"]: c["ok"] for c in second["checks"]}["temperature"] is None  # not measured, not judged
    assert overview["limits"]["iso_class_max"] == 5.0 and overview["limits"]["humidity_range"] == [30.0, 55.0]


def test_latest_telemetry_per_asset_and_kind(fleet: Fleet) -> None:
    machine_id = f"9{uuid.uuid4().int % 10_000}"
    fleet.publish(  # a plant-export row from a legacy machine: factory/machine/{Machine_ID}/telemetry
        f"factory/machine/{machine_id}/telemetry",
        {"timestamp": 1767225600, "Machine_ID": machine_id, "Temperature_C": 71.5, "Operation_Mode": "Active"},
    )
    fleet.robot("R-5", robot_payload("R-5", 1, health=90.0, temperature=40.0))
    fleet.robot("R-5", robot_payload("R-5", 2, health=89.0, temperature=40.5))
    wait_until(lambda: fleet.get("/api/telemetry/latest").json()["total"] == 2, what="two readings")
    wait_until(lambda: fleet.get("/api/robots/R-5").json()["telemetry"]["seq"] == 2, what="second reading")

    everything = fleet.get("/api/telemetry/latest").json()
    assert [(i["kind"], i["asset_id"]) for i in everything["items"]] == [("machine", machine_id), ("robot", "R-5")]
    machine = everything["items"][0]
    assert machine["reading"]["Temperature_C"] == 71.5 and machine["reading"]["ts"].startswith("2026-01-01T00:00:00")
    assert machine["topic"] == f"factory/machine/{machine_id}/telemetry"
    robots = fleet.get("/api/telemetry/latest", kind="robot").json()
    assert robots["total"] == 1 and robots["items"][0]["reading"]["seq"] == 2  # the latest, not the first
    assert fleet.get("/api/telemetry/latest", asset_id=machine_id).json()["items"][0]["kind"] == "machine"
    assert fleet.get("/api/telemetry/latest", kind="cleanroom").json()["items"] == []
    paged = fleet.get("/api/telemetry/latest", limit=1, offset=1).json()
    assert [i["asset_id"] for i in paged["items"]] == ["R-5"] and paged["next_offset"] is None
    bad = fleet.get("/api/telemetry/latest", kind="toaster")
    assert bad.status_code == 422 and bad.headers["content-type"].startswith(PROBLEM_JSON)


def test_malformed_payloads_are_skipped_and_counted(fleet: Fleet) -> None:
    fleet.robot("R-8", b"{not json")
    fleet.robot("R-8", b"[1, 2, 3]")
    fleet.robot("R-8", {"health_score": 250, "temperature": 40})  # health out of 0..100
    fleet.publish(f"factory/{fleet.site}/R-8/nonsense", {"temperature": 1})  # fits no topic layout
    fleet.robot("R-8", robot_payload("R-8", 7, health=77.0))
    robot = wait_until(lambda: (r := fleet.get("/api/robots/R-8")).status_code == 200 and r.json(), what="R-8")
    assert robot["telemetry"]["seq"] == 7 and robot["health_score"] == 77.0
    live = fleet.get("/api/telemetry/latest").json()["live"]
    assert live["rejected"] == 4 and live["accepted"] == 1 and live["connected"] is True
    assert [i["asset_id"] for i in fleet.get("/api/telemetry/latest").json()["items"]] == ["R-8"]


def test_another_sites_telemetry_is_not_ours(fleet: Fleet) -> None:
    fleet.publish(telemetry_topic(f"{fleet.site}-other", "R-1"), robot_payload("R-1", 1, health=50.0))
    fleet.robot("R-1", robot_payload("R-1", 1, health=60.0))
    robot = wait_until(lambda: (r := fleet.get("/api/robots/R-1")).status_code == 200 and r.json(), what="R-1")
    assert robot["health_score"] == 60.0 and fleet.get("/api/robots").json()["total"] == 1


def test_a_command_while_the_broker_is_down_is_a_503_and_recorded_unanswered(
    tmp_path: Path, site: str, free_port: Callable[[], int]
) -> None:
    settings = fleet_settings(tmp_path, f"mqtt://127.0.0.1:{free_port()}", site)
    settings.ensure_dirs()
    store = ServingStore(settings.resolved_db_url)
    store.upsert_predictions([rul_prediction("R-9", 900.0, 700.0, 1100.0)])  # known from its prediction only
    app = create_app(settings)
    try:
        with TestClient(app) as api:
            listed = api.get("/api/robots", headers=VIEWER).json()
            assert [r["robot_id"] for r in listed["items"]] == ["R-9"] and listed["live"]["connected"] is False
            assert listed["items"][0]["maintenance_priority"] == "medium"  # worst case 700 cycles < 1200

            refused = api.post("/api/robots/R-9/command", json={"command": "stop"}, headers=OPERATOR)
            assert refused.status_code == 503 and refused.headers["content-type"].startswith(PROBLEM_JSON)
            problem = refused.json()
            assert problem["type"].endswith("broker-unavailable") and refused.headers["retry-after"]
            command = api.get(f"/api/commands/{problem['command_id']}", headers=VIEWER).json()
            assert command["status"] == "unanswered" and command["detail"].startswith("not delivered")
            assert command["issued_by"] == "settings key 1" and command["command"] == "stop"
    finally:
        app.state.serving.live.close()  # also closed by the app's shutdown; twice is harmless
        store.dispose()


def test_the_command_book_keeps_orphan_acks_and_settles_once(tmp_path: Path) -> None:
    store = ServingStore(f"sqlite:///{tmp_path / 'serving.db'}")
    book = CommandBook(store.engine)
    try:
        early = CommandAck(asset_id="R-1", ts=utc_now(), command_id="c-early", command="stop", status="done")
        assert book.record_ack(early).issued_at is None  # the ack beat the record: kept
        recorded = book.record_issued("R-1", Command(command_id="c-early", command="stop", issued_by="ana"))
        assert recorded.status == CommandStatus.DONE and recorded.issued_by == "ana"  # the asset's answer stays

        issued = book.record_issued("R-2", Command(command_id="c-2", command="slow", parameters={"factor": 0.3}))
        assert issued.status == CommandStatus.SENT and issued.parameters == {"factor": 0.3}
        assert book.expire_unanswered(utc_now() + timedelta(seconds=1), command_id="c-2") == 1
        late = CommandAck(asset_id="R-2", ts=utc_now(), command_id="c-2", command="slow", status="rejected")
        assert book.record_ack(late).status == CommandStatus.REJECTED  # a late answer still counts
        again = book.record_ack(late.model_copy(update={"status": "done"}))
        assert again.status == CommandStatus.REJECTED and book.mark_unanswered("c-2", "x").status == "rejected"
        assert book.get("nope") is None
    finally:
        store.dispose()


@pytest.mark.parametrize(
    ("rul_lower", "health", "expected"),
    [
        (150.0, 99.0, "critical"),
        (450.0, None, "high"),
        (5000.0, 45.0, "high"),
        (1000.0, 90.0, "medium"),
        (5000.0, 90.0, "low"),
        (None, 25.0, "critical"),
        (None, None, "unknown"),
    ],
)
def test_maintenance_priority_takes_the_more_urgent_verdict(
    rul_lower: float | None, health: float | None, expected: str
) -> None:
    assert maintenance_priority(rul_lower, health)[0] == expected
