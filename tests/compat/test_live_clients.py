"""The earlier live dashboards, as WebSocket clients of the running platform.

The robot dashboard connects to `/ws`, reads `init` first, sends `{"type": "subscribe", "channel":
"all"}` and `{"type": "ping"}`, then switches on the `type` of each message (`telemetry`,
`robot_update`, `cleanroom`, `alert`), its data under `payload`. The agent dashboards connect to
`/ws/{agent}` and take each new prediction as `{"agent_id", "timestamp", "prediction"}`. Nothing
changes on their side but the address and a key (`?api_key=` or `X-API-Key`).

One module fixture connects every socket, then publishes once (an earlier robot and the cleanroom
through a plain device, our simulator's fleet under asset ids of this file), raises one alert over
REST and scores once; the tests read what the sockets collected, each on a reader thread of its own.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import polars as pl
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from factory_pipelines.simulator import Fleet, FleetConfig
from factory_pipelines.telemetry import cleanroom_topic, dump_payload, telemetry_topic, utc_now
from tests.compat.running_platform import OPERATOR_KEY, VIEWER_KEY, RunningPlatform
from tests.waiting import wait_until

PREFIX = "wsl"  # every asset this file publishes starts with it: the platform is shared
LEGACY_ROBOT = f"{PREFIX}-robot-legacy"
LEGACY_ROBOT_PAYLOAD = {"temperature": 45.2, "vibration": {"rms": 0.35}, "health_score": 85}
# The earlier cleanroom device's names: one particle count (taken at 0.5 um) and `pressure` (Pa).
CLEANROOM_PAYLOAD = {"particles": 3517, "temperature": 21.37, "humidity": 44.6, "pressure": 12.9}
ALERT_BODY = {"level": "WARNING", "type": "DOOR_OPEN", "source": f"{PREFIX}-script", "details": "bay 3 door open"}
FLEET_STEPS = 3  # readings per asset, a second apart: every camera shows its first frame on the first

# agent -> (earlier agent_id, model, our assets it scores)
AGENT_STREAMS: dict[str, tuple[str, str, frozenset[str]]] = {
    "pm": ("pm_agent", "rul_lstm", frozenset({f"{PREFIX}-robot-01"})),
    "energy": ("energy_agent", "energy_iforest", frozenset({f"{PREFIX}-machine-01", f"{PREFIX}-machine-02"})),
    "cyber": ("cyber_agent", "cyber_detector", frozenset({f"{PREFIX}-machine-01", f"{PREFIX}-machine-02"})),
    "safety": ("hazard_agent", "safety_hazard", frozenset({f"{PREFIX}-safety-01"})),
    "ppe": ("ppe_agent", "ppe_vision", frozenset({f"{PREFIX}-camera-01"})),
}
WAIT_S = 20.0

Message = dict[str, Any]


class Socket:
    """A dashboard's socket: a thread reads every message into `messages`; tests wait on them."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.messages: list[Message] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="compat-ws-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            for raw in self.connection:
                with self._changed:
                    self.messages.append(json.loads(raw))
                    self._changed.notify_all()

    def wait_for(self, match: Callable[[Message], bool], what: str, timeout: float = WAIT_S) -> Message:
        """The first message since the connection opened that matches; fails after `timeout`."""
        with self._changed:
            found = self._changed.wait_for(lambda: next((m for m in self.messages if match(m)), None), timeout)
            if found is None:
                raise AssertionError(f"{what} not received within {timeout} s; got {[m.get('type') for m in self]}")
            return found

    def __iter__(self) -> Iterator[Message]:
        with self._changed:
            return iter(list(self.messages))

    def send(self, message: Message) -> None:
        self.connection.send(json.dumps(message))

    def close(self) -> None:
        self.connection.close()
        self._reader.join(timeout=5)


def open_socket(platform: RunningPlatform, path: str, *, key_in_url: bool = True, key: str = VIEWER_KEY) -> Socket:
    """As the earlier clients connect, plus a key: in the URL (browsers) or as `X-API-Key` (scripts)."""
    if key_in_url:
        return Socket(connect(f"{platform.ws_url}{path}?api_key={key}", open_timeout=WAIT_S))
    return Socket(connect(f"{platform.ws_url}{path}", additional_headers={"X-API-Key": key}, open_timeout=WAIT_S))


@dataclass
class LiveSession:
    platform: RunningPlatform
    dashboard: Socket
    agents: dict[str, Socket]
    alert: Message  # the POST /alert answer
    champions: dict[str, str]  # model -> champion version, as /health reports it


def publish_fleet(platform: RunningPlatform) -> set[str]:
    """Our simulator's machines, robot, safety station and camera, under this file's asset ids (QoS 1)."""
    fleet = Fleet(FleetConfig(machines=2, robots=1, cleanrooms=0, safety_stations=1, cameras=1), {}, seq_start=0)
    start = utc_now() - timedelta(seconds=FLEET_STEPS)
    published: set[str] = set()
    with platform.device(f"{PREFIX}-fleet") as device:
        for step in range(FLEET_STEPS):
            for _topic, payload in fleet.step(start + timedelta(seconds=step)):
                asset_id = f"{PREFIX}-{payload.asset_id}"  # type: ignore[attr-defined]
                update: dict[str, Any] = {"asset_id": asset_id}
                if getattr(payload, "zone", None):
                    update["zone"] = f"{PREFIX}-{payload.zone}"  # type: ignore[attr-defined]
                wire = dump_payload(payload.model_copy(update=update))
                device.client.publish(telemetry_topic(platform.settings.site, asset_id), wire, qos=1).wait_for_publish(
                    10
                )
                published.add(asset_id)
    return published


@pytest.fixture(scope="module")
def live(platform: RunningPlatform) -> Iterator[LiveSession]:
    dashboard = open_socket(platform, "/ws")
    agents = {agent: open_socket(platform, f"/ws/{agent}", key_in_url=False) for agent in AGENT_STREAMS}
    try:
        dashboard.wait_for(lambda m: m["type"] == "init", "init")
        with platform.http() as http:  # the API's MQTT feed is up before the devices speak
            wait_until(
                lambda: http.get("/api/telemetry/latest", params={"limit": 1}).json()["live"]["subscribed"],
                WAIT_S,
                "the API's live feed subscribed",
            )
            champions = {
                name: model["version"]
                for name, model in http.get("/health").json()["components"]["models"]["models"].items()
            }
        dashboard.send({"type": "subscribe", "channel": "all"})
        dashboard.send({"type": "ping"})
        dashboard.wait_for(lambda m: m["type"] == "pong", "pong")

        with platform.device(f"{PREFIX}-legacy") as device:
            device.publish(telemetry_topic(platform.settings.site, LEGACY_ROBOT), LEGACY_ROBOT_PAYLOAD)
            device.publish(cleanroom_topic(platform.settings.site), CLEANROOM_PAYLOAD)
        with platform.http(OPERATOR_KEY) as http:
            answer = http.post("/alert", json=ALERT_BODY)
            assert answer.status_code == 200, answer.text
        fleet = publish_fleet(platform)

        def ready(rows: pl.DataFrame) -> bool:
            return fleet <= set(rows["asset_id"].to_list())

        platform.score(ready, f"{sorted(fleet)} in sealed windows")
        yield LiveSession(platform, dashboard, agents, answer.json(), champions)
    finally:
        for socket in (dashboard, *agents.values()):
            socket.close()


# ---- the robot dashboard on /ws ----


def test_init_comes_first_and_carries_the_current_state(live: LiveSession) -> None:
    first = live.dashboard.wait_for(lambda m: True, "a first message")
    assert first["type"] == "init"
    assert {"robots", "cleanroom", "alerts", "predictions", "live"} <= set(first["payload"])

    # A dashboard opened later finds in its init what the devices, the script and the models did.
    live.dashboard.wait_for(lambda m: m["type"] == "robot_update" and m["payload"]["robot_id"] == LEGACY_ROBOT, "robot")
    late = open_socket(live.platform, "/ws", key_in_url=False)
    try:
        init = late.wait_for(lambda m: True, "the late dashboard's first message")
    finally:
        late.close()
    assert init["type"] == "init"
    state = init["payload"]
    robot = next(r for r in state["robots"] if r["robot_id"] == LEGACY_ROBOT)
    assert robot["health_score"] == 85 and robot["telemetry"]["temperature"] == 45.2
    assert robot["telemetry"]["vibration"]["rms"] == 0.35
    room = next(c for c in state["cleanroom"] if c["asset_id"] == f"cleanroom-{live.platform.settings.site}")
    assert set(room) >= {"particles", "temperature", "humidity", "pressure", "particles_per_m3"}
    assert live.alert["alert_id"] in [a["alert_id"] for a in state["alerts"]]
    latest = {(p["model_name"], p["asset_id"]) for p in state["predictions"]}
    for _agent_id, model, assets in AGENT_STREAMS.values():
        assert {(model, asset) for asset in assets} <= latest


def test_subscribe_all_and_ping_are_answered(live: LiveSession) -> None:
    subscribed = live.dashboard.wait_for(lambda m: m["type"] == "subscribed", "subscribed")
    assert subscribed["payload"]["assets"] is None
    assert subscribed["payload"]["channels"] == [
        "telemetry",
        "robot_update",
        "cleanroom",
        "prediction",
        "alert",
        "backlog",
    ]
    assert live.dashboard.wait_for(lambda m: m["type"] == "pong", "pong")["payload"] == {}


def test_an_earlier_robots_telemetry_arrives_as_telemetry_and_robot_update(live: LiveSession) -> None:
    def about_legacy_robot(type_: str) -> Callable[[Message], bool]:
        return lambda m: (
            m["type"] == type_ and LEGACY_ROBOT in (m["payload"].get("asset_id"), m["payload"].get("robot_id"))
        )

    telemetry = live.dashboard.wait_for(about_legacy_robot("telemetry"), "telemetry of the earlier robot")["payload"]
    assert telemetry["robot_id"] == LEGACY_ROBOT and telemetry["asset_id"] == LEGACY_ROBOT
    assert telemetry["kind"] == "robot"
    # The device's fields as it sent them, at the payload's top level and under `reading`.
    for fields in (telemetry, telemetry["reading"]):
        assert (fields["temperature"], fields["vibration"], fields["health_score"]) == (45.2, {"rms": 0.35}, 85)

    update = live.dashboard.wait_for(about_legacy_robot("robot_update"), "robot_update of the earlier robot")["payload"]
    assert update["robot_id"] == LEGACY_ROBOT and update["health_score"] == 85 and update["online"] is True
    assert update["telemetry"]["temperature"] == 45.2 and update["health_source"] == "device"


def test_the_cleanroom_status_arrives_as_a_cleanroom_event(live: LiveSession) -> None:
    def ours(m: Message) -> bool:
        return m["type"] == "cleanroom" and m["payload"].get("particles_per_m3") == {"0.5": 3517.0}

    room = live.dashboard.wait_for(ours, "our cleanroom status")["payload"]
    assert room["asset_id"] == f"cleanroom-{live.platform.settings.site}"
    assert (room["particles"], room["temperature"], room["humidity"], room["pressure"]) == (3517, 21.37, 44.6, 12.9)
    assert room["differential_pressure_pa"] == 12.9  # and the platform's own names
    assert room["within_limits"] is True and room["violations"] == []


def test_an_alert_posted_by_a_script_arrives_as_an_alert_event(live: LiveSession) -> None:
    alert_id = live.alert["alert_id"]
    event = live.dashboard.wait_for(lambda m: m["type"] == "alert" and m["payload"]["alert_id"] == alert_id, "alert")
    alert = event["payload"]
    assert (alert["level"], alert["type"], alert["source"], alert["details"]) == (
        "WARNING",
        "DOOR_OPEN",
        f"{PREFIX}-script",
        "bay 3 door open",
    )
    assert alert["severity"] == "WARNING" and alert["message"] == "bay 3 door open"


def test_predictions_of_our_assets_reach_the_dashboard_too(live: LiveSession) -> None:
    for _agent_id, model, assets in AGENT_STREAMS.values():
        for asset in assets:
            event = live.dashboard.wait_for(
                lambda m, model=model, asset=asset: (
                    m["type"] == "prediction"
                    and (m["payload"]["model_name"], m["payload"]["asset_id"]) == (model, asset)
                ),
                f"{model} prediction for {asset}",
            )
            assert event["payload"]["model_version"] == live.champions[model]


def test_every_dashboard_message_has_a_type_and_a_payload(live: LiveSession) -> None:
    live.dashboard.wait_for(
        lambda m: m["type"] == "alert" and m["payload"]["alert_id"] == live.alert["alert_id"], "alert"
    )
    messages = list(live.dashboard)
    assert messages and all(isinstance(m["type"], str) and isinstance(m["payload"], dict) for m in messages)
    assert {"init", "subscribed", "pong", "telemetry", "robot_update", "cleanroom", "alert"} <= {
        m["type"] for m in messages
    }


# ---- the agent dashboards on /ws/{agent} ----


@pytest.mark.parametrize("agent", list(AGENT_STREAMS))
def test_each_agent_stream_pushes_its_models_new_predictions_for_our_assets(live: LiveSession, agent: str) -> None:
    agent_id, model, assets = AGENT_STREAMS[agent]
    socket = live.agents[agent]
    for asset in assets:
        push = socket.wait_for(lambda m, asset=asset: m["prediction"]["asset_id"] == asset, f"/ws/{agent}: {asset}")
        assert set(push) == {"agent_id", "timestamp", "prediction"} and push["agent_id"] == agent_id
        prediction = push["prediction"]
        assert prediction["model_name"] == model and prediction["model_version"] == live.champions[model]
        assert push["timestamp"] == prediction["timestamp"] and push["timestamp"].endswith("+00:00")
        assert prediction["alert_level"] in {"NORMAL", "CAUTION", "WARNING", "CRITICAL", "EMERGENCY"}
        assert prediction["action"]


def test_an_agent_stream_carries_only_its_own_models_predictions(live: LiveSession) -> None:
    for agent, (agent_id, model, assets) in AGENT_STREAMS.items():
        socket = live.agents[agent]
        socket.wait_for(lambda m, assets=assets: m["prediction"]["asset_id"] in assets, f"/ws/{agent}")
        pushes = list(socket)
        assert {m["agent_id"] for m in pushes} == {agent_id}
        assert {m["prediction"]["model_name"] for m in pushes} == {model}


# ---- keys ----


@pytest.mark.parametrize("path", ["/ws", "/ws/pm"])
def test_a_missing_or_wrong_key_is_refused_with_4401(platform: RunningPlatform, path: str) -> None:
    for url in (f"{platform.ws_url}{path}", f"{platform.ws_url}{path}?api_key=not-a-key-of-ours"):
        with connect(url, open_timeout=WAIT_S) as connection, pytest.raises(ConnectionClosed) as closed:
            connection.recv(timeout=WAIT_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401, url
