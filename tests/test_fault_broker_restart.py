"""The MQTT broker is SIGKILLed mid-stream and restarted: every part of the platform comes back by itself.

One Mosquitto of the test's own (persistence on, a free port) carries the whole platform, each part
a process of its own as `factory up` would start it: the collector (`factory collect`), the edge
simulator (`factory simulate`, one machine and one robot at 5 Hz), the SCADA bridge (`factory
bridge`, Modbus TCP and OPC UA on free ports) and the REST API (`factory serve`). A numbered QoS 1
stream in the test records which messages the broker acknowledged.

Mid-stream the broker is SIGKILLed. The test waits until every part has noticed, restarts the
broker on the same port and data dir, and then checks each part came back without help: the
collector seals windows again, and every acknowledged message of the numbered stream is in exactly
one sealed window; the simulator's readings reach the windows again; the bridge's Modbus registers
carry new values again; the API's /ready answers 200 again and its live feed shows readings that
arrived after the restart. A part that does not come back fails the test by name.

Why SIGUSR1 first: Mosquitto writes its persistence file every `autosave_interval` (60 s) and on a
clean stop, never on SIGKILL. A broker in service has saved the collector's long-lived session many
times over; this broker is seconds old, so it is asked to save once (SIGUSR1), after the collector
subscribed and before the stream starts. Without that, the restarted broker would not know the
collector's subscription until the collector is back, and would acknowledge (and drop) what the
publishers resend in the meantime: a property of the broker, not of the platform.
"""

from __future__ import annotations

import re
import shutil
import signal
import struct
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from pymodbus.client import ModbusTcpClient

from factory_pipelines.broker import RunningBroker, start_local_broker
from factory_pipelines.model_registry import ensure_experiment
from factory_pipelines.simulator import machine_asset_id, robot_asset_id
from scada_bridge.modbus_map import ASSET_ID_REGISTERS, IR_ASSET_ID_OFFSET, AssetRegister, Header, RegisterLayout
from scada_bridge.points import POINTS
from scada_bridge.state import Quality
from tests.factory_processes import (  # noqa: F401 - factory_processes is a fixture
    FactoryProcesses,
    factory_env,
    factory_processes,
    wait_for_part,
)
from tests.numbered_stream import NumberedStream, durable_keys, sealed_rows, sealed_rows_received_since
from tests.waiting import wait_until

SITE = "main"
ROBOT, MACHINE = robot_asset_id(1), machine_asset_id(1)  # `factory simulate --robots 1 --machines 1`
FLEET = frozenset({ROBOT, MACHINE})  # the simulator's assets
STREAM_ASSETS = ("press-a", "press-b")
STREAM_RATE_PER_S = 200.0
START_TIMEOUT_S = 60.0  # five Python processes importing their stacks on two shared cores
NOTICE_TIMEOUT_S = 20.0
RECOVER_TIMEOUT_S = 30.0
PERSIST_TIMEOUT_S = 10.0

# Where the bridge puts things, from its own register map (offsets in a block do not depend on the slot count).
LAYOUT = RegisterLayout.of(1, POINTS)
CYCLE_COUNT_OFFSET = LAYOUT.offsets["robot/cycle_count"]  # float32, ABCD


Step = tuple[str, Callable[[], Any], str]  # (part, condition, what it shows)


class BridgeModbus:
    """Reads the bridge's input registers as a PLC would; None for a read that did not work."""

    def __init__(self, port: int) -> None:
        self.client = ModbusTcpClient("127.0.0.1", port=port, timeout=2)

    def registers(self, address: int, count: int) -> list[int] | None:
        try:
            if not self.client.connected and not self.client.connect():
                return None
            answer = self.client.read_input_registers(address, count=count, device_id=1)
        except Exception:  # a connection the bridge dropped, a timeout: the caller polls again
            self.client.close()
            return None
        return None if answer.isError() else list(answer.registers)

    def header(self, register: int) -> int | None:
        values = self.registers(register, 1)
        return values[0] if values else None

    def slot_of(self, asset_id: str) -> int | None:
        used = self.header(Header.SLOTS_USED) or 0
        for slot in range(used):
            words = self.registers(LAYOUT.ir_base(slot) + IR_ASSET_ID_OFFSET, ASSET_ID_REGISTERS)
            if words is not None and b"".join(w.to_bytes(2, "big") for w in words).rstrip(b"\0") == asset_id.encode():
                return slot
        return None

    def robot_reading(self, slot: int) -> tuple[int, float] | None:
        """(quality, cycle_count) of the robot in `slot`."""
        block = self.registers(LAYOUT.ir_base(slot), CYCLE_COUNT_OFFSET + 2)
        if block is None:
            return None
        high, low = block[CYCLE_COUNT_OFFSET], block[CYCLE_COUNT_OFFSET + 1]
        (cycles,) = struct.unpack(">f", high.to_bytes(2, "big") + low.to_bytes(2, "big"))
        return block[AssetRegister.QUALITY], cycles

    def close(self) -> None:
        self.client.close()


class Api:
    """The API process over HTTP; every call bounded, a refused connection read as no answer."""

    def __init__(self, port: int) -> None:
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)

    def get(self, path: str, **params: Any) -> httpx.Response | None:
        try:
            return self.client.get(path, params=params)
        except httpx.TransportError:
            return None

    def ready(self) -> tuple[int, str] | None:
        """(status code, broker component status) of GET /ready."""
        answer = self.get("/ready")
        if answer is None:
            return None
        return answer.status_code, answer.json()["components"]["broker"]["status"]

    def robot_feed(self) -> tuple[bool, datetime | None]:
        """Whether the live feed is connected, and when the robot's latest reading arrived."""
        answer = self.get("/api/telemetry/latest", kind="robot", asset_id=ROBOT)
        if answer is None or answer.status_code != 200:
            return False, None
        body = answer.json()
        arrived = [datetime.fromisoformat(item["received_at"]) for item in body["items"]]
        return bool(body["live"]["connected"] and body["live"]["subscribed"]), max(arrived, default=None)

    def close(self) -> None:
        self.client.close()


def persist_sessions(broker: RunningBroker, data_dir: Path) -> None:
    """Have Mosquitto write its persistence file now (SIGUSR1), as its autosave would have long ago."""
    database = data_dir / "persistence" / "mosquitto.db"
    before = database.stat().st_mtime_ns if database.exists() else None
    assert broker.process is not None
    broker.process.send_signal(signal.SIGUSR1)
    wait_until(
        lambda: database.exists() and database.stat().st_mtime_ns != before,
        timeout=PERSIST_TIMEOUT_S,
        what="Mosquitto to write its persistence file",
    )


def assets_sealed_since(windows_dir: Path, moment: datetime, assets: set[str]) -> set[str]:
    """Which of `assets` have rows in sealed windows that the collector received after `moment`."""
    return set(sealed_rows_received_since(windows_dir, moment, assets)["asset_id"])


def simulator_published(log_text: str) -> int:
    """The total `factory simulate` prints when it stops: 'published 1,234 messages in 12.3 s (...)'."""
    totals = re.findall(r"published ([\d,]+) messages in [\d.]+ s \(", log_text)
    assert totals, f"the simulator did not report what it published:\n{log_text[-2000:]}"
    return int(totals[-1].replace(",", ""))


@pytest.fixture
def own_broker_port(free_port: Callable[[], int]) -> int:
    if shutil.which("mosquitto") is None:
        pytest.skip("needs Mosquitto: a broker with persistence that restarts on the same port and data dir")
    return free_port()


@pytest.fixture
def brokers() -> Iterator[list[RunningBroker]]:
    """Every broker incarnation the test starts; all stopped at its end."""
    started: list[RunningBroker] = []
    yield started
    for broker in started:
        broker.stop()


@pytest.mark.timeout(150)
def test_every_part_reconnects_by_itself_after_a_broker_restart_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
    free_port: Callable[[], int],
    own_broker_port: int,
    brokers: list[RunningBroker],
    factory_processes: FactoryProcesses,  # noqa: F811
) -> None:
    broker_dir = tmp_path / "broker"
    brokers.append(start_local_broker(own_broker_port, broker_dir, prefer="mosquitto"))
    url = brokers[0].url
    data_dir = tmp_path / "data"
    windows_dir = data_dir / "windows"
    ports = {"api": free_port(), "modbus": free_port(), "opcua": free_port()}
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    env = factory_env(
        FACTORY_DATA_DIR=str(data_dir),
        FACTORY_MQTT_URL=url,
        FACTORY_SITE=SITE,
        FACTORY_WINDOW_SECONDS="1",
        FACTORY_COLLECTOR_ID=f"restart-{uuid.uuid4().hex[:6]}",
        FACTORY_API_HOST="127.0.0.1",
        FACTORY_API_PORT=str(ports["api"]),
        FACTORY_MODBUS_PORT=str(ports["modbus"]),
        FACTORY_OPCUA_PORT=str(ports["opcua"]),
        FACTORY_OPCUA_USERS="operator:a-long-secret-9:operator",
        FACTORY_MLFLOW_TRACKING_URI=mlflow_uri,
    )

    # ---- the platform, each part its own process ----
    collector = factory_processes.start("collector", ["collect"], env)
    bridge = factory_processes.start("bridge", ["bridge"], env)
    api_process = factory_processes.start("api", ["serve"], env)  # asks the registry on the first /ready only
    collector.wait_for_log("subscribed to", timeout=START_TIMEOUT_S)
    persist_sessions(brokers[0], broker_dir)  # the collector's session survives the SIGKILL below
    simulator = factory_processes.start(  # after the collector subscribed: every reading it sends is kept
        "simulator",
        ["simulate", "--machines", "1", "--robots", "1", "--cleanrooms", "0", "--safety-stations", "0"]
        + ["--cameras", "0", "--rate", "5"],
        env,
    )
    stream = NumberedStream(
        url, site=SITE, assets=STREAM_ASSETS, rate_per_s=STREAM_RATE_PER_S, client_id="restart-test-publisher"
    )
    stream.start()
    # A registry that answers (no champion needed), so /ready depends on the broker and the store only.
    ensure_experiment(mlflow_uri, "broker-restart", tmp_path / "mlflow" / "artifacts")
    api, modbus = Api(ports["api"]), BridgeModbus(ports["modbus"])
    processes = {  # whose logs a failure shows
        "collector": [collector],
        "simulator": [simulator, collector],
        "bridge": [bridge],
        "api": [api_process],
        "numbered stream": [collector],
    }
    try:
        # ---- everything flows before the fault ----
        wait_for_part("api", lambda: api.ready() == (200, "up"), START_TIMEOUT_S, "GET /ready answers 200", api_process)
        wait_for_part("api", lambda: api.robot_feed()[1], START_TIMEOUT_S, f"live feed shows {ROBOT}", api_process)
        (slot,) = wait_for_part(  # a 1-tuple: slot 0 is a slot too
            "bridge",
            lambda: (found := modbus.slot_of(ROBOT)) is not None and (found,),
            START_TIMEOUT_S,
            f"a Modbus slot for {ROBOT}",
            bridge,
        )
        live_before = wait_for_part(
            "bridge", lambda: modbus.robot_reading(slot), START_TIMEOUT_S, f"{ROBOT}'s registers", bridge
        )
        assert live_before[0] == Quality.GOOD, live_before
        wait_for_part(
            "collector",
            lambda: (
                assets_sealed_since(windows_dir, datetime.min.replace(tzinfo=UTC), {ROBOT, *STREAM_ASSETS})
                == {ROBOT, *STREAM_ASSETS}
            ),
            START_TIMEOUT_S,
            "sealed windows holding the simulator's and the stream's rows",
            collector,
            simulator,
        )
        acknowledged_before_kill = len(stream.acknowledged)
        assert acknowledged_before_kill > 0

        # ---- SIGKILL the broker mid-stream; every part notices ----
        assert stream.is_alive() and simulator.alive()
        assert brokers[0].process is not None
        brokers[0].process.kill()
        brokers[0].process.wait(timeout=10)
        noticed: list[Step] = [
            ("collector", lambda: collector.count("disconnected from the broker"), "logs the lost connection"),
            ("simulator", lambda: simulator.count("connection to the broker lost"), "logs the lost connection"),
            ("bridge", lambda: modbus.header(Header.BROKER_CONNECTED) == 0, "Modbus says the broker is disconnected"),
            ("bridge", lambda: bridge.count("MQTT connection lost"), "logs the lost connection"),
            ("api", lambda: api.ready() == (503, "down"), "GET /ready answers 503 with the broker down"),
            ("api", lambda: not api.robot_feed()[0], "live feed says disconnected"),
            ("api", lambda: api_process.count("live telemetry: MQTT connection lost"), "logs the lost connection"),
            ("numbered stream", lambda: stream.disconnects, "notices the lost connection"),
        ]
        for part, check, what in noticed:
            wait_for_part(part, check, NOTICE_TIMEOUT_S, what, *processes[part])
        stale = wait_for_part(
            "bridge",
            lambda: (r := modbus.robot_reading(slot)) and r[0] == Quality.STALE and r,
            NOTICE_TIMEOUT_S,
            f"{ROBOT} marked stale in Modbus",
            bridge,
        )

        # ---- restart on the same port and data dir; nobody is told ----
        brokers.append(start_local_broker(own_broker_port, broker_dir, prefer="mosquitto"))
        restarted_at = datetime.now(UTC)
        recovered: list[Step] = [
            ("collector", lambda: collector.count("subscribed to") >= 2, "reconnects and subscribes again"),
            (
                "collector",
                lambda: assets_sealed_since(windows_dir, restarted_at, set(STREAM_ASSETS)),
                "seals windows with stream messages received after the restart",
            ),
            ("simulator", lambda: simulator.count("reconnected to"), "reconnects"),
            (
                "simulator",
                lambda: assets_sealed_since(windows_dir, restarted_at, set(FLEET)) == FLEET,
                "its readings reach sealed windows again",
            ),
            ("bridge", lambda: modbus.header(Header.BROKER_CONNECTED) == 1, "Modbus says the broker is connected"),
            ("bridge", lambda: bridge.count("values are live again"), "logs that it is back"),
            ("api", lambda: api.ready() == (200, "up"), "GET /ready answers 200 again"),
            (
                "api",
                lambda: (feed := api.robot_feed())[0] and feed[1] and feed[1] > restarted_at,
                f"live feed shows {ROBOT} readings newer than the restart",
            ),
            ("api", lambda: api_process.count("live telemetry: MQTT connection back"), "logs that it is back"),
            (
                "numbered stream",
                lambda: len(stream.acknowledged) > acknowledged_before_kill + 200,
                "acknowledged again after the restart",
            ),
        ]
        for part, check, what in recovered:
            wait_for_part(part, check, RECOVER_TIMEOUT_S, what, *processes[part])
        live_after = wait_for_part(
            "bridge",
            lambda: (r := modbus.robot_reading(slot)) and r[0] == Quality.GOOD and r[1] > stale[1] and r,
            RECOVER_TIMEOUT_S,
            f"{ROBOT}'s cycle count moves on in Modbus (stale at {stale[1]:.0f})",
            bridge,
        )
        assert live_after[1] > live_before[1]
    finally:
        api.close()
        modbus.close()
        never_acknowledged = stream.stop_and_settle(timeout=RECOVER_TIMEOUT_S)

    # ---- nothing acknowledged is lost, nothing is sealed twice ----
    assert not never_acknowledged, f"{len(never_acknowledged)} messages never acknowledged after the restart"
    assert not stream.refused, f"the broker refused {len(stream.refused)} messages: {list(stream.refused.items())[:3]}"
    assert not stream.unrouted, (
        f"the broker routed {len(stream.unrouted)} messages to no subscriber (the collector's session was lost)"
    )
    assert simulator.stop(signal.SIGTERM) == 0, simulator.log_tail()
    simulated = simulator_published(simulator.log())
    wait_for_part(
        "collector",
        lambda: (
            (keys := durable_keys(windows_dir)) >= stream.acknowledged
            and sum(asset in FLEET for asset, _ in keys) >= simulated
        ),
        RECOVER_TIMEOUT_S,
        f"every acknowledged message and all {simulated} simulated readings on disk",
        collector,
    )
    assert collector.stop(signal.SIGTERM) == 0, collector.log_tail()
    per_message = sealed_rows(windows_dir, "asset_id", "seq").group_by("asset_id", "seq").len()
    twice = per_message.filter(pl.col("len") > 1)
    assert twice.is_empty(), f"{twice.height} messages sealed more than once, e.g. {twice.head(5).rows()}"
    sealed = set(per_message.filter(pl.col("asset_id").is_in(list(STREAM_ASSETS))).select("asset_id", "seq").rows())
    lost = stream.acknowledged - sealed
    assert not lost, f"{len(lost)} acknowledged messages in no sealed window, e.g. {sorted(lost)[:5]}"
    assert sealed == stream.acknowledged  # and nothing the broker never acknowledged
    # The simulator's readings: all there, each asset's seqs without a hole across the outage.
    by_asset = (
        per_message.filter(pl.col("asset_id").is_in(list(FLEET)))
        .group_by("asset_id")
        .agg(pl.len().alias("rows"), (pl.col("seq").max() - pl.col("seq").min() + 1).alias("span"))
    )
    assert by_asset["rows"].sum() == simulated, by_asset
    assert (by_asset["rows"] == by_asset["span"]).all(), f"simulated readings missing in the middle: {by_asset}"
    assert stream.connects >= 2
    assert bridge.stop(signal.SIGINT) == 0, bridge.log_tail()
    assert api_process.stop(signal.SIGTERM) == 0, api_process.log_tail()
