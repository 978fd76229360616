"""The live WebSocket hub end to end: the real app under uvicorn on a loopback port, the session MQTT
broker, a real SQLite store and real WebSocket clients (websockets' sync client, each reading on a
thread of its own). Each test uses a site of its own, so no test sees another's telemetry; waits are
on conditions with a timeout, never sleeps."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from factory_pipelines.backlog_book import BacklogBook
from factory_pipelines.backlog_model import Backlog, WriterInfo
from factory_pipelines.mqtt import connect_and_wait, make_client
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import (
    Command,
    Prediction,
    backlog_topic,
    cleanroom_topic,
    command_topic,
    dump_payload,
    prediction_topic,
    telemetry_topic,
    utc_now,
)
from serving import create_app
from serving.events import close_hub, running_hub
from tests.conftest import MqttRecorder, find_free_port
from tests.waiting import wait_until

OPERATOR_KEY = "operator-key-123"
VIEWER_KEY = "viewer-key-1234"
WAIT_S = 10.0


class LiveClient:
    """A WebSocket client whose thread reads every message into `messages`; tests wait on them."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.messages: list[dict[str, Any]] = []
        self.closed: tuple[int | None, str | None] | None = None  # (code, reason) the server closed with
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="ws-test-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):  # iteration ends quietly on a normal close, raises otherwise
            for raw in self.connection:
                with self._changed:
                    self.messages.append(json.loads(raw))
                    self._changed.notify_all()
        with self._changed:
            self.closed = (self.connection.close_code, self.connection.close_reason)
            self._changed.notify_all()

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = WAIT_S, what: str = "message"
    ) -> dict[str, Any]:
        """The first message (from the start of the connection) that matches; fails after `timeout`."""
        scanned = 0

        def first_match() -> dict[str, Any] | None:
            nonlocal scanned  # each message is looked at once, however many arrive while we wait
            while scanned < len(self.messages):
                scanned += 1
                if match(self.messages[scanned - 1]):
                    return self.messages[scanned - 1]
            return None

        with self._changed:
            found = self._changed.wait_for(first_match, timeout)
            if found is None:
                types = [m.get("type") for m in self.messages]
                raise AssertionError(f"{what} not received within {timeout} s; got {types}")
            return found

    def event(self, type_: str, asset_id: str | None = None, timeout: float = WAIT_S) -> dict[str, Any]:
        def match(message: dict[str, Any]) -> bool:
            return message.get("type") == type_ and (asset_id is None or asset_of(message) == asset_id)

        return self.wait_for(match, timeout, what=f"{type_} {asset_id or ''}")

    def wait_closed(self, timeout: float = WAIT_S) -> tuple[int | None, str | None]:
        """(code, reason) of the server's close frame, once the connection is closed."""
        with self._changed:
            assert self._changed.wait_for(lambda: self.closed is not None, timeout), "connection not closed"
            assert self.closed is not None
            return self.closed

    def send(self, message: dict[str, Any]) -> None:
        self.connection.send(json.dumps(message))

    def close(self) -> None:
        self.connection.close()
        self._reader.join(timeout=5)


def asset_of(message: dict[str, Any]) -> str | None:
    payload = message.get("payload") or {}
    return payload.get("asset_id") or payload.get("robot_id")


@dataclass
class LivePlant:
    """The app under uvicorn, the store it reads, a device-side MQTT publisher, and clients to open."""

    app: FastAPI
    settings: FactorySettings
    port: int
    store: ServingStore
    publisher: mqtt.Client
    http: httpx.Client
    clients: list[LiveClient] = field(default_factory=list)

    @property
    def site(self) -> str:
        return self.settings.site

    def url(self, path: str = "/ws", key: str | None = OPERATOR_KEY) -> str:
        query = f"?api_key={key}" if key is not None else ""
        return f"ws://127.0.0.1:{self.port}{path}{query}"

    def open(self, path: str = "/ws", key: str | None = OPERATOR_KEY, **options: Any) -> LiveClient:
        client = LiveClient(connect(self.url(path, key), open_timeout=WAIT_S, **options))
        self.clients.append(client)
        return client

    def publish(self, topic: str, payload: dict[str, Any] | bytes) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self.publisher.publish(topic, raw, qos=1)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), f"broker did not take the message on {topic}"

    def robot(self, robot_id: str, seq: int, **extra: Any) -> None:
        self.publish(telemetry_topic(self.site, robot_id), robot_payload(robot_id, seq, **extra))

    def live_ready(self) -> None:
        assert self.app.state.serving.live.wait_ready(WAIT_S), "live feed not subscribed"


def robot_payload(robot_id: str, seq: int, *, health: float = 81.0, **extra: Any) -> dict[str, Any]:
    return {
        "asset_id": robot_id,
        "ts": utc_now().isoformat(),
        "seq": seq,
        "vibration": {"rms": 0.05, "kurtosis": 3.2},
        "temperature": 42.0,
        "health_score": health,
        "state": "running",
        **extra,
    }


def prediction(model_name: str, asset_id: str, score: float, label: str = "normal", **extra: Any) -> Prediction:
    start = utc_now().replace(microsecond=0) - timedelta(minutes=1)
    return Prediction(
        model_name=model_name,
        model_version="4",
        asset_id=asset_id,
        window_key=f"{start:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
        score=score,
        label=label,
        produced_at=utc_now(),
        window_start=start,
        window_end=start + timedelta(minutes=1),
        **extra,
    )


def plant_settings(tmp_path: Path, mqtt_url: str, **overrides: Any) -> FactorySettings:
    settings = load_settings(
        data_dir=tmp_path / "data",
        mqtt_url=mqtt_url,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        site=f"t{uuid.uuid4().hex[:10]}",
        api_keys=f"{OPERATOR_KEY}:operator,{VIEWER_KEY}:viewer",
        **{"allow_anonymous_read": False, **overrides},
    )
    settings.ensure_dirs()
    return settings


@contextmanager
def run_plant(settings: FactorySettings) -> Iterator[LivePlant]:
    app = create_app(settings)
    port = find_free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="ws-test-uvicorn", daemon=True)
    store = ServingStore(settings.resolved_db_url)
    publisher = make_client(f"test-device-{uuid.uuid4().hex[:8]}")
    connect_and_wait(publisher, settings.mqtt_url)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": OPERATOR_KEY}, timeout=WAIT_S)
    plant = LivePlant(app, settings, port, store, publisher, http)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), what="uvicorn started")
        assert server.started, "uvicorn did not start"
        yield plant
    finally:
        for client in plant.clients:
            client.close()
        close_hub(app)
        server.should_exit = True
        thread.join(timeout=WAIT_S)
        http.close()
        publisher.disconnect()
        publisher.loop_stop()
        store.dispose()


@pytest.fixture
def plant(tmp_path: Path, mqtt_url: str) -> Iterator[LivePlant]:
    with run_plant(plant_settings(tmp_path, mqtt_url)) as running:
        yield running


def events_after(client: LiveClient, first: dict[str, Any]) -> list[dict[str, Any]]:
    """Messages received after `first` (by identity), up to now."""
    index = next(i for i, m in enumerate(client.messages) if m is first)
    return client.messages[index + 1 :]


# ---- init and events ----


def test_init_comes_first_and_carries_the_current_state(plant: LivePlant) -> None:
    plant.store.upsert_predictions([prediction("energy_iforest", "M-7", 0.91, "anomaly")])
    shift = plant.settings.shift_calendar.shift_at(utc_now())
    BacklogBook(plant.store.engine).save(
        Backlog(
            shift=shift,
            summary="Nothing urgent.",
            tasks=[],
            generated_at=utc_now(),
            writer=WriterInfo(name="deterministic"),
            evidence=[],
        )
    )
    raised = plant.http.post(
        "/alert", json={"level": "WARNING", "type": "WS_TEST", "source": "ws-test", "details": "x", "asset_id": "R-1"}
    )
    assert raised.status_code == 200, raised.text
    assert plant.http.get("/api/telemetry/latest").status_code == 200  # starts the live feed
    plant.live_ready()
    plant.robot("R-1", 1, health=64.0)
    plant.publish(cleanroom_topic(plant.site), {"iso_class": 4.6, "temperature": 21.0, "humidity": 44.0})
    wait_until(lambda: plant.http.get("/api/telemetry/latest").json()["total"] == 2, what="both readings seen")

    client = plant.open()
    init = client.wait_for(lambda m: True, what="a first message")
    assert init["type"] == "init" and init["ts"].endswith("+00:00")
    state = init["payload"]
    assert [r["robot_id"] for r in state["robots"]] == ["R-1"]
    assert state["robots"][0]["health_score"] == 64.0 and state["robots"][0]["maintenance_priority"] == "medium"
    assert state["robots"] == plant.http.get("/api/robots").json()["items"]
    assert [c["asset_id"] for c in state["cleanroom"]] == [f"cleanroom-{plant.site}"]
    assert state["cleanroom"][0]["within_limits"] is True
    assert [a["alert_id"] for a in state["alerts"]] == [raised.json()["alert_id"]]
    assert [(p["model_name"], p["asset_id"], p["label"]) for p in state["predictions"]] == [
        ("energy_iforest", "M-7", "anomaly")
    ]
    assert state["predictions"][0]["produced_at"].endswith("+00:00")
    assert state["backlog"]["shift"]["key"] == shift.key and state["backlog"]["summary"] == "Nothing urgent."
    assert state["live"]["subscribed"] is True and state["warnings"] == []


def test_telemetry_arrives_as_events_robot_and_cleanroom_updates_too(plant: LivePlant) -> None:
    client = plant.open()
    client.event("init")
    plant.live_ready()
    plant.robot("R-1", 5, health=42.0, firmware="2.1")
    room_reading = {
        "iso_class": 6.2,
        "humidity": 40.0,
        "particles_per_m3": {"0.5": 3000.0},
        "differential_pressure_pa": 11.0,
    }
    plant.publish(cleanroom_topic(plant.site), room_reading)

    telemetry = client.event("telemetry", "R-1")["payload"]
    assert telemetry["kind"] == "robot" and telemetry["topic"] == telemetry_topic(plant.site, "R-1")
    assert telemetry["reading"]["seq"] == 5 and telemetry["reading"]["firmware"] == "2.1"  # extras kept
    item = plant.http.get("/api/telemetry/latest", params={"asset_id": "R-1"}).json()["items"][0]
    assert {k: v for k, v in telemetry.items() if k in item} == item  # the REST item, plus the earlier fields:
    assert telemetry["robot_id"] == "R-1" and telemetry["temperature"] == 42.0 and telemetry["seq"] == 5
    assert telemetry["vibration"] == {"rms": 0.05, "kurtosis": 3.2} and "firmware" not in telemetry  # extras: reading

    update = client.event("robot_update", "R-1")
    robot = update["payload"]
    assert robot["health_score"] == 42.0 and robot["maintenance_priority"] == "high" and robot["online"] is True
    assert robot["telemetry"]["seq"] == 5 and robot["live"]["connected"] is True and update["ts"].endswith("+00:00")
    rest = plant.http.get("/api/robots/R-1").json()
    assert {k: v for k, v in robot.items() if k != "live"} == {k: v for k, v in rest.items() if k != "live"}

    room = client.event("cleanroom", f"cleanroom-{plant.site}")["payload"]
    assert room["within_limits"] is False and room["violations"] == ["iso_class 6.2 outside <= 5"]
    assert (room["particles"], room["pressure"]) == (3000.0, 11.0)  # the earlier names too
    assert client.event("telemetry", f"cleanroom-{plant.site}")["payload"]["kind"] == "cleanroom"


def test_predictions_reach_ws_and_the_agent_stream_and_backlogs_reach_ws(plant: LivePlant) -> None:
    client = plant.open()
    pm = plant.open("/ws/pm")
    client.event("init")
    plant.live_ready()
    energy = prediction("energy_iforest", "M-2", 0.2)
    rul = prediction("rul_lstm", "R-4", 150.0, "rul_low", rul_lower=120.0, rul_upper=180.0)
    plant.publish(prediction_topic(energy.model_name, energy.asset_id), dump_payload(energy))
    plant.publish(prediction_topic(rul.model_name, rul.asset_id), dump_payload(rul))

    event = client.event("prediction", "R-4")
    assert event["payload"]["window_key"] == rul.window_key and event["payload"]["produced_at"].endswith("+00:00")
    assert client.event("prediction", "M-2")["payload"]["model_name"] == "energy_iforest"

    pushed = pm.wait_for(lambda m: "agent_id" in m, what="a pm push")
    assert pushed["agent_id"] == "pm_agent" and pushed["timestamp"] == rul.produced_at.isoformat()
    assert pushed["prediction"]["window_key"] == rul.window_key  # the energy prediction went to no pm client
    assert pushed["prediction"]["alert_level"] == "CRITICAL" and pushed["prediction"]["action"]
    assert [m for m in pm.messages if "agent_id" in m] == [pushed]

    shift = plant.settings.shift_calendar.shift_at(utc_now())
    backlog = Backlog(
        shift=shift,
        summary="Two bearings.",
        tasks=[],
        generated_at=utc_now(),
        writer=WriterInfo(name="gemini"),
        evidence=[],
    )
    plant.publish(backlog_topic(plant.site), backlog.model_dump_json().encode())
    sent = client.event("backlog")["payload"]
    assert sent["summary"] == "Two bearings." and sent["backlog_id"] == backlog.backlog_id


def test_an_alert_raised_over_rest_arrives_as_an_alert_event(plant: LivePlant) -> None:
    client = plant.open()
    client.event("init")
    plant.live_ready()
    body = {"level": "WARNING", "type": "WS_ALERT", "source": "ws-test", "details": "door open", "asset_id": "R-3"}
    answer = plant.http.post("/alert", json=body)
    assert answer.status_code == 200, answer.text
    alert_id = answer.json()["alert_id"]
    event = client.wait_for(lambda m: m["type"] == "alert" and m["payload"]["alert_id"] == alert_id, what="alert")
    alert = event["payload"]
    assert alert["severity"] == "WARNING" and alert["asset_id"] == "R-3" and alert["message"] == "door open"
    assert alert["action"] == answer.json()["action"] and alert["ts"].endswith("+00:00")
    assert (alert["level"], alert["type"], alert["source"], alert["details"]) == (
        "WARNING",
        "WS_ALERT",
        "ws-test",
        "door open",
    )


# ---- client messages ----


def test_subscribe_filters_channels_and_assets(plant: LivePlant) -> None:
    client = plant.open()
    client.event("init")
    plant.live_ready()
    client.send({"type": "subscribe", "channels": ["telemetry", "alert"], "assets": ["R-1"]})
    subscribed = client.event("subscribed")
    assert subscribed["payload"] == {"channels": ["telemetry", "alert"], "assets": ["R-1"]}

    plant.robot("R-2", 1)  # another asset
    plant.publish(cleanroom_topic(plant.site), {"iso_class": 4.0})  # another asset, another channel
    plant.robot("R-1", 2)  # telemetry passes; its robot_update is another channel
    plant.robot("R-1", 3)
    client.wait_for(lambda m: m["type"] == "telemetry" and m["payload"]["reading"]["seq"] == 3, what="R-1 seq 3")
    after = events_after(client, subscribed)
    assert [(m["type"], asset_of(m), m["payload"]["reading"]["seq"]) for m in after] == [
        ("telemetry", "R-1", 2),
        ("telemetry", "R-1", 3),
    ]

    client.send({"type": "subscribe", "channel": "all"})
    back = client.wait_for(lambda m: m["type"] == "subscribed" and m["payload"]["assets"] is None, what="all")
    assert back["payload"]["channels"] == ["telemetry", "robot_update", "cleanroom", "prediction", "alert", "backlog"]
    plant.robot("R-2", 4)
    client.event("robot_update", "R-2")


def test_ping_pong_and_malformed_messages_keep_the_connection(plant: LivePlant) -> None:
    client = plant.open()
    client.event("init")
    client.connection.send("{not json")
    client.send({"type": "subscribe", "channels": ["weather"]})
    client.send({"type": "dance"})
    client.send({"type": "command", "command": "stop"})  # no asset_id
    errors = wait_until(lambda: len(e := [m for m in client.messages if m["type"] == "error"]) == 4 and e)
    assert {e["payload"]["status"] for e in errors} == {422}
    assert errors[0]["payload"]["detail"].startswith("not JSON")
    assert "weather" in errors[1]["payload"]["detail"] and "asset_id" in errors[3]["payload"]["detail"]
    client.send({"type": "ping"})
    pong = client.event("pong")
    assert pong["ts"].endswith("+00:00") and client.closed is None


def test_commands_need_the_operator_role_and_reach_the_asset(plant: LivePlant, mqtt_recorder: Any) -> None:
    recorder: MqttRecorder = mqtt_recorder(command_topic(plant.site, "R-1"))
    viewer = plant.open(key=VIEWER_KEY)
    operator = plant.open(key=OPERATOR_KEY)
    viewer.event("init")
    operator.event("init")
    plant.live_ready()
    plant.robot("R-1", 1)
    operator.event("telemetry", "R-1")

    viewer.send({"type": "command", "asset_id": "R-1", "command": "stop", "parameters": {}})
    refused = viewer.event("error")["payload"]
    assert refused["status"] == 403 and "viewer" in refused["detail"]

    operator.send({"type": "command", "asset_id": "R-404", "command": "stop"})
    assert operator.event("error")["payload"]["status"] == 404

    operator.send({"type": "command", "asset_id": "R-1", "command": "slow", "parameters": {"factor": 0.5}})
    sent = operator.event("command_sent")["payload"]
    assert sent["asset_id"] == "R-1" and sent["command"] == "slow" and sent["status"] == "sent"
    messages = recorder.wait_for(lambda ms: len(ms) == 1, what="the command on MQTT")
    command = Command.model_validate_json(messages[0].payload)
    assert command.command_id == sent["command_id"] and command.parameters == {"factor": 0.5}
    assert plant.http.get(f"/api/commands/{sent['command_id']}").json()["status"] == "sent"


def test_a_wrong_or_missing_key_is_closed_with_4401(plant: LivePlant) -> None:
    wrong = plant.open(key="not-a-key-at-all")
    code, reason = wrong.wait_closed()
    assert code == 4401 and "unknown" in (reason or "") and wrong.messages == []
    missing = plant.open(key=None)
    code, reason = missing.wait_closed()
    assert code == 4401 and "API key" in (reason or "") and missing.messages == []
    by_header = LiveClient(
        connect(plant.url(key=None), additional_headers={"Authorization": f"Bearer {VIEWER_KEY}"}, open_timeout=WAIT_S)
    )
    plant.clients.append(by_header)
    assert by_header.event("init")["payload"]["robots"] == []
    with pytest.raises(InvalidStatus):  # not an agent: refused at the handshake
        connect(plant.url("/ws/toaster"), open_timeout=WAIT_S)


def test_anonymous_reads_when_settings_allow_them(tmp_path: Path, mqtt_url: str) -> None:
    with run_plant(plant_settings(tmp_path, mqtt_url, allow_anonymous_read=True)) as plant:
        client = plant.open(key=None)
        assert client.event("init")["type"] == "init"
        client.send({"type": "command", "asset_id": "R-1", "command": "stop"})
        assert client.event("error")["payload"]["status"] == 401


# ---- slow clients ----


def test_a_client_that_never_reads_is_dropped_while_another_keeps_receiving(plant: LivePlant) -> None:
    fast = plant.open()
    fast.event("init")
    # The slow client stops reading from its socket after one frame (max_queue=1, nobody calls recv)
    # and has a tiny receive buffer, so the server's buffers fill after a few hundred kB.
    sock = socket.create_connection(("127.0.0.1", plant.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow = connect(plant.url(), sock=sock, max_queue=1, ping_interval=None, compression=None, open_timeout=WAIT_S)
    hub = wait_until(lambda: (h := running_hub(plant.app)) is not None and h.stats().connections == 2 and h)
    plant.live_ready()

    padding = os.urandom(3000).hex()  # an extra field, kept: 12 kB per message (telemetry, robot_update)
    sent = 0
    deadline = time.monotonic() + 60
    while hub.stats().dropped_slow == 0:
        assert time.monotonic() < deadline, f"slow client not dropped after {sent} messages"
        sent += 1
        plant.robot("R-1", sent, padding=padding)
        if sent % 50 == 0:  # the fast client keeps up all along
            fast.wait_for(lambda m, n=sent: m["type"] == "telemetry" and m["payload"]["reading"]["seq"] == n)
    plant.robot("R-1", sent + 1)
    # (not its robot_update: that reads the latest reading when encoded, so it may run ahead of the telemetry)
    fast.wait_for(lambda m: m["type"] == "telemetry" and m["payload"]["reading"]["seq"] == sent + 1)
    seqs = [m["payload"]["reading"]["seq"] for m in fast.messages if m["type"] == "telemetry"]
    assert seqs == list(range(1, sent + 2))  # every message, in order
    stats = hub.stats()
    assert stats.dropped_slow == 1 and stats.connections == 1 and fast.closed is None

    # Reading at last, the slow client finds what was queued before the drop, then a 1013 close.
    received = 0
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # a small buffer reads slowly
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            slow.recv(timeout=WAIT_S)
            received += 1
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert "too slow" in closed.value.rcvd.reason and received < sent * 2
