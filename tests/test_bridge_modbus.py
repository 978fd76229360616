"""The SCADA bridge's Modbus TCP side: a real pymodbus client against the bridge fed by a real broker.

Each test runs its own bridge (state, MQTT feed, register map, pymodbus server on a free port) for a
site of its own, publishes on MQTT what a device or the platform would, and reads the documented
registers back. The broker outage test starts and kills a Mosquitto of its own. Writers are told
apart by source address: Linux routes all of 127.0.0.0/8 to lo, so a client bound to 127.0.0.2 is a
second host as far as the bridge can tell.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import struct
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from pymodbus.client import ModbusTcpClient
from typer.testing import CliRunner

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.alert_model import AlertCandidate
from factory_pipelines.broker import start_local_broker
from factory_pipelines.command_book import CommandBook
from factory_pipelines.settings import load_settings
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import (
    Alert,
    CommandAck,
    RobotTelemetry,
    Severity,
    alert_topic,
    cleanroom_topic,
    command_topic,
    dump_payload,
    prediction_topic,
    telemetry_topic,
)
from scada_bridge.cli import bridge as bridge_command
from scada_bridge.commands import CommandSender
from scada_bridge.dnp3_points import dnp3_points, format_dnp3_points
from scada_bridge.feed import BridgeFeed
from scada_bridge.modbus_map import (
    ASSET_BASE,
    ASSET_ID_REGISTERS,
    DI_BLOCK,
    HR_BLOCK,
    IR_ASSET_ID_OFFSET,
    IR_BLOCK,
    AssetBit,
    AssetRegister,
    AssetSlots,
    CommandRegister,
    CommandResult,
    Header,
    RegisterLayout,
    RegisterMap,
    float_registers,
    format_register_map,
)
from scada_bridge.modbus_server import NOT_A_WRITER, ModbusBridgeServer, ModbusServerThread, RefusalLog, WriterList
from scada_bridge.points import POINTS, POINTS_BY_KEY, telemetry_points
from scada_bridge.state import DEFAULT_MAX_ASSETS, BridgeState, Quality
from tests.conftest import MqttRecorder
from tests.device_publisher import Publisher
from tests.predictions import recent_prediction
from tests.waiting import wait_until

FLOAT32 = ModbusTcpClient.DATATYPE.FLOAT32
UNIT = 1


def as_float32(value: float) -> float:
    """What a float32 register pair can hold of `value`."""
    return struct.unpack(">f", struct.pack(">f", value))[0]


# ---- a bridge and a client for one test ------------------------------------------------------


@dataclass
class Bridge:
    site: str
    state: BridgeState
    feed: BridgeFeed
    map: RegisterMap
    server: ModbusBridgeServer
    thread: ModbusServerThread
    client: ModbusTcpClient
    sender: CommandSender

    # -- reading the documented registers --

    def input_registers(self, address: int, count: int) -> list[int]:
        response = self.client.read_input_registers(address, count=count, device_id=UNIT)
        assert not response.isError(), response
        return list(response.registers)

    def holding(self, address: int, count: int = 1) -> list[int]:
        response = self.client.read_holding_registers(address, count=count, device_id=UNIT)
        assert not response.isError(), response
        return list(response.registers)

    def bits(self, address: int, count: int) -> list[bool]:
        response = self.client.read_discrete_inputs(address, count=count, device_id=UNIT)
        assert not response.isError(), response
        return list(response.bits[:count])

    def header(self, register: Header) -> int:
        return self.input_registers(register, 1)[0]

    def slot_of(self, asset_id: str) -> int | None:
        """Find an asset's slot as a client would: the asset id text of each assigned slot."""
        for slot in range(self.header(Header.SLOTS_USED)):
            base = ASSET_BASE + IR_BLOCK * slot + IR_ASSET_ID_OFFSET
            raw = b"".join(r.to_bytes(2, "big") for r in self.input_registers(base, ASSET_ID_REGISTERS))
            if raw.rstrip(b"\0").decode() == asset_id:
                return slot
        return None

    def wait_slot(self, asset_id: str) -> int:
        def found() -> tuple[int] | None:
            slot = self.slot_of(asset_id)
            return None if slot is None else (slot,)

        return wait_until(found, what=f"a slot for {asset_id}")[0]

    def block(self, slot: int) -> list[int]:
        base = ASSET_BASE + IR_BLOCK * slot
        return self.input_registers(base, 100) + self.input_registers(base + 100, 100)

    def point(self, slot: int, key: str) -> float:
        offset = self.map.layout.offsets[key]
        base = ASSET_BASE + IR_BLOCK * slot + offset
        return float(self.client.convert_from_registers(self.input_registers(base, 2), FLOAT32, word_order="big"))

    def asset_bits(self, slot: int) -> list[bool]:
        return self.bits(ASSET_BASE + DI_BLOCK * slot, DI_BLOCK)


@pytest.fixture
def site() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def start_bridge(tmp_path: Path, free_port: Callable[[], int], site: str) -> Iterator[Callable[..., Bridge]]:
    started: list[Bridge] = []

    def _start(
        mqtt_url: str,
        *,
        db_url: str | None = None,
        writes_enabled: bool = False,
        book: CommandBook | None = None,
        max_assets: int = 20,
        writers: Sequence[str] = (),
    ) -> Bridge:
        state = BridgeState(site=site, max_assets=max_assets)
        feed = BridgeFeed(state, mqtt_url, db_url=db_url, reconnect_max_delay_s=1.0)
        register_map = RegisterMap(
            state, AssetSlots(max_assets, tmp_path / f"slots-{len(started)}.json"), writes_enabled=writes_enabled
        )
        sender = CommandSender(site, feed.publish, book=book)
        server = ModbusBridgeServer(
            register_map,
            port=free_port(),
            commands=sender,
            writers=[ipaddress.ip_network(writer) for writer in writers],
        )
        thread = ModbusServerThread(server)
        thread.start()
        feed.start()
        assert feed.wait_connected(10), "the bridge did not connect to the broker"
        client = ModbusTcpClient("127.0.0.1", port=server.port, timeout=5)
        assert client.connect()
        bridge = Bridge(site, state, feed, register_map, server, thread, client, sender)
        started.append(bridge)
        return bridge

    yield _start
    for bridge in started:
        bridge.client.close()
        bridge.thread.stop()
        bridge.feed.stop()
        bridge.map.close()


@pytest.fixture
def publisher(mqtt_url: str) -> Iterator[Publisher]:
    pub = Publisher(mqtt_url)
    yield pub
    pub.close()


# ---- the point list and the printed map (no network) -----------------------------------------


def test_point_list_is_derived_from_the_contract() -> None:
    keys = {p.key for p in POINTS}
    numeric_robot_fields = {"temperature", "motor_current", "cycle_count", "health_score"}
    assert {f"robot/{name}" for name in numeric_robot_fields} <= keys
    assert {f"robot/vibration/{name}" for name in ("rms", "kurtosis", "bpfo", "bpfi", "bsf", "ftf")} <= keys
    assert {f"machine/{name}" for name in ("power_consumption_kw", "packet_loss_pct", "error_rate_pct")} <= keys
    assert "cleanroom/particles_per_m3/0.5" in keys and "safety/noise_db" in keys
    assert not any("true_" in key for key in keys), "simulator ground truth is no SCADA point"
    assert POINTS_BY_KEY["robot/motor_current"].unit == "A"  # from the contract's description
    assert POINTS_BY_KEY["safety/noise_db"].unit == "dB(A)"
    assert POINTS_BY_KEY["machine/power_consumption_kw"].unit == "kW"  # from the units table
    assert POINTS_BY_KEY["robot/state"].codes == {"running": 0, "slow": 1, "stopped": 2}
    for model in ("rul_lstm", "energy_iforest", "cyber_detector", "safety_hazard", "ppe_vision"):
        assert {f"prediction/{model}/score", f"prediction/{model}/label"} <= keys
    assert {"prediction/rul_lstm/rul_lower", "prediction/rul_lstm/rul_upper"} <= keys
    assert {"alerts/open_info", "alerts/open_warning", "alerts/open_critical"} <= keys
    # A field added to the contract becomes a point without touching the bridge.
    assert len([p for p in telemetry_points() if p.source == "robot"]) == 11


def test_printed_map_documents_word_order_compat_block_and_slots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    slots = AssetSlots(5, data_dir / "scada_bridge" / "modbus_slots.json")
    slots.assign("robot-7")
    text = format_register_map(RegisterLayout.of(5, POINTS), slots)
    assert "big-endian word order and big-endian byte order (ABCD)" in text
    assert "| 0 | PM: RUL hours |" in text and "| 503 | System status" in text
    assert "| 3 | PM: failure probability x100 | **no source: 0**" in text
    assert "| 0 | robot-7 | 1000-1199 |" in text

    app = typer.Typer()
    app.command()(bridge_command)
    monkeypatch.setenv("FACTORY_DATA_DIR", str(data_dir))
    result = CliRunner().invoke(app, ["--print-register-map"])
    assert result.exit_code == 0, result.output
    assert "robot-7" in result.output and "`robot/vibration/rms`" in result.output


def test_slots_stay_put_across_restarts_and_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "slots.json"
    first = AssetSlots(2, path)
    assert (first.assign("a"), first.assign("b"), first.assign("a")) == (0, 1, 0)
    assert first.assign("c") is None and first.refused == 1
    again = AssetSlots(2, path)
    assert (again.slot_of("a"), again.slot_of("b"), again.slot_of("c")) == (0, 1, None)


def test_bad_payloads_are_counted_never_raised() -> None:
    state = BridgeState(site="main", max_assets=1)
    state.handle_message("factory/main/r1/telemetry", b"{not json")
    state.handle_message("predictions/rul_lstm/r1", b'{"score": "high"}')
    state.handle_message("factory/main/r1/telemetry", json.dumps({"temperature": 40.0}).encode())
    state.handle_message("factory/main/r2/telemetry", json.dumps({"temperature": 41.0}).encode())  # no room
    stats = state.stats()
    assert (stats.rejected, stats.assets, stats.assets_refused) == (2, 1, 1)
    assert state.value("r1", "robot/temperature").value == 40.0  # type: ignore[union-attr]


# ---- live values over Modbus -----------------------------------------------------------------


def test_registers_decode_the_values_just_published(
    start_bridge: Callable[..., Bridge], mqtt_url: str, publisher: Publisher, site: str
) -> None:
    bridge = start_bridge(mqtt_url)
    robot, machine, zone = f"{site}-robot", f"{site}-press", f"{site}-zone"
    robot_ts = datetime.now(UTC) - timedelta(seconds=2)
    publisher.publish(
        telemetry_topic(site, robot),
        dump_payload(
            RobotTelemetry.model_validate(
                {
                    "asset_id": robot,
                    "ts": robot_ts,
                    "temperature": 47.25,
                    "motor_current": 3.3,
                    "cycle_count": 123456,
                    "health_score": 81.5,
                    "state": "slow",
                    "vibration": {"rms": 0.35, "kurtosis": 3.1, "bpfo": 0.012},
                }
            )
        ),
    )
    slot = bridge.wait_slot(robot)
    wait_until(lambda: bridge.point(slot, "robot/temperature") == 47.25, what="robot temperature over Modbus")
    assert bridge.point(slot, "robot/motor_current") == as_float32(3.3)
    assert bridge.point(slot, "robot/cycle_count") == 123456.0
    assert bridge.point(slot, "robot/vibration/rms") == as_float32(0.35)
    assert bridge.point(slot, "robot/vibration/bpfo") == as_float32(0.012)
    assert bridge.point(slot, "robot/state") == 1.0  # code: slow
    assert math.isnan(bridge.point(slot, "robot/vibration/ftf"))  # not sent: NaN
    assert math.isnan(bridge.point(slot, "machine/temperature_c"))  # not a field of a robot

    # A device of the plant export layout (seed clients: no ts, no seq, columns as in the CSV).
    publisher.publish(
        f"factory/{site}/{machine}/telemetry",
        {"Machine_ID": "7", "Temperature_C": 71.5, "Power_Consumption_kW": 8.75, "Operation_Mode": "Idle"},
    )
    publisher.publish(cleanroom_topic(site), {"particles_per_m3": {"0.5": 3520.0}, "humidity": 45.5})
    publisher.publish(telemetry_topic(site, zone), {"kind": "safety", "gas_ppm": 12.5, "workers": 4})
    rul = recent_prediction("rul_lstm", robot, 812.5, "normal", rul_lower=640.0, rul_upper=990.5, confidence=0.9)
    publisher.publish(prediction_topic("rul_lstm", robot), dump_payload(rul))

    machine_slot = bridge.wait_slot(machine)
    wait_until(lambda: bridge.point(machine_slot, "machine/power_consumption_kw") == 8.75, what="machine power")
    assert bridge.point(machine_slot, "machine/temperature_c") == 71.5
    assert bridge.point(machine_slot, "machine/operation_mode") == 1.0  # Idle
    cleanroom_slot = bridge.wait_slot(f"cleanroom-{site}")
    wait_until(lambda: bridge.point(cleanroom_slot, "cleanroom/humidity") == 45.5, what="cleanroom humidity")
    assert bridge.point(cleanroom_slot, "cleanroom/particles_per_m3/0.5") == 3520.0
    zone_slot = bridge.wait_slot(zone)
    wait_until(lambda: bridge.point(zone_slot, "safety/gas_ppm") == 12.5, what="safety gas")
    assert bridge.point(zone_slot, "safety/workers") == 4.0
    wait_until(lambda: bridge.point(slot, "prediction/rul_lstm/score") == 812.5, what="the RUL prediction")
    assert bridge.point(slot, "prediction/rul_lstm/rul_lower") == 640.0
    assert bridge.point(slot, "prediction/rul_lstm/rul_upper") == 990.5
    assert bridge.point(slot, "prediction/rul_lstm/label") == 0.0

    # The status registers: good, fresh, no alerts; the header tells the layout.
    block = bridge.block(slot)
    assert block[AssetRegister.QUALITY] == Quality.GOOD and block[AssetRegister.AGE_S] <= 5
    assert block[AssetRegister.OPEN_CRITICAL] == 0 and block[AssetRegister.IN_USE] == 1
    header = bridge.input_registers(0, 12)
    assert (header[Header.ASSET_BASE], header[Header.IR_BLOCK], header[Header.BROKER_CONNECTED]) == (
        ASSET_BASE,
        IR_BLOCK,
        1,
    )
    bits = bridge.asset_bits(slot)
    assert bits[AssetBit.QUALITY_GOOD] and not bits[AssetBit.ANY_OPEN]

    # The registers are the documented ABCD float32: decode by hand too.
    offset = bridge.map.layout.offsets["robot/temperature"]
    assert block[offset : offset + 2] == list(float_registers(47.25)) == [0x423D, 0x0000]


def test_open_alerts_show_as_counts_and_discrete_inputs(
    start_bridge: Callable[..., Bridge], mqtt_url: str, publisher: Publisher, site: str
) -> None:
    bridge = start_bridge(mqtt_url)
    robot = f"{site}-robot"
    publisher.publish(telemetry_topic(site, robot), {"temperature": 40.0})
    slot = bridge.wait_slot(robot)
    alert = Alert(
        alert_id=f"A-{uuid.uuid4().hex[:8]}",
        severity=Severity.CRITICAL,
        source="rul_lstm",
        type="RUL_LOW",
        asset_id=robot,
        message="bearing worn",
        state="ACTIVE_UNACK",
    )
    publisher.publish(alert_topic(alert.severity), dump_payload(alert))
    wait_until(lambda: bridge.block(slot)[AssetRegister.OPEN_CRITICAL] == 1, what="the open CRITICAL alert")
    bits = bridge.asset_bits(slot)
    assert bits[AssetBit.OPEN_CRITICAL] and bits[AssetBit.ANY_OPEN] and bits[AssetBit.UNACKNOWLEDGED]
    assert not bits[AssetBit.OPEN_WARNING]

    cleared = alert.model_copy(update={"state": "CLEARED_ACK"})
    publisher.publish(alert_topic(alert.severity), dump_payload(cleared))
    wait_until(lambda: bridge.block(slot)[AssetRegister.OPEN_CRITICAL] == 0, what="the alert cleared")
    assert not bridge.asset_bits(slot)[AssetBit.ANY_OPEN]


# ---- the earlier bridge's compatibility block ------------------------------------------------


def test_compat_block_reads_stored_and_published_predictions(
    start_bridge: Callable[..., Bridge], mqtt_url: str, publisher: Publisher, site: str, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'serving.db'}"
    store = ServingStore(db_url)
    robot, machines, zone, camera = f"{site}-robot", [f"{site}-m{i}" for i in range(4)], f"{site}-z", f"{site}-cam"
    store.upsert_predictions(
        [
            recent_prediction("rul_lstm", robot, 3600.0, "normal", rul_lower=3000.0, rul_upper=4200.0),
            *(recent_prediction("energy_iforest", m, 0.52, "normal") for m in machines),
            recent_prediction("cyber_detector", machines[0], 0.91, "attack", attack_type="ddos"),
            *(recent_prediction("cyber_detector", m, 0.05, "normal") for m in machines[1:]),
            recent_prediction("safety_hazard", zone, 0.4, "medium", zone="assembly"),
            recent_prediction(
                "ppe_vision", camera, 0.8, "violation", frames=10, frames_in_violation=2, no_hardhat=True, no_vest=False
            ),
        ]
    )
    now = datetime.now(UTC)
    AlertBook(store.engine).raise_or_repeat(
        AlertCandidate(
            rule="rul_low",
            type="RUL_LOW",
            severity=Severity.WARNING,
            source="rul_lstm",
            asset_id=robot,
            message="RUL interval reaches 600 cycles",
            dedup_key=f"rul_low:{robot}",
            observed_at=now,
        ),
        now=now,
    )
    store.dispose()

    bridge = start_bridge(mqtt_url, db_url=db_url)
    # The first store read seeds predictions, then alerts: wait for the whole read, not its first half.
    wait_until(
        lambda: bridge.feed.store_syncs >= 1 and bridge.holding(501)[0] == 5,
        what="the five models' stored predictions and the open alert",
    )
    # Two robot readings ten minutes apart (source time): 300 cycles per 10 min = 1800 cycles/h.
    for minutes, cycles in ((10, 10_000), (0, 10_300)):
        reading = {"ts": (now - timedelta(minutes=minutes)).isoformat(), "cycle_count": cycles, "health_score": 72.4}
        publisher.publish(telemetry_topic(site, robot), reading)
    publisher.publish(f"factory/{site}/{machines[0]}/telemetry", {"Power_Consumption_kW": 12.5})
    publisher.publish(f"factory/{site}/{machines[1]}/telemetry", {"Power_Consumption_kW": 7.5})
    publisher.publish(telemetry_topic(site, zone), {"kind": "safety", "workers": 6})
    wait_until(lambda: bridge.holding(0)[0] == 2, what="RUL hours: 3600 cycles at 1800 cycles/h")

    # Register N is what a client reading address N gets: single reads, no offset.
    assert bridge.holding(1) == [72]  # lowest robot health score
    assert bridge.holding(2) == [1]  # the open WARNING of rul_lstm
    assert bridge.holding(3) == [0]  # no source
    assert bridge.holding(100, 5) == [200, 100, 0, 0, 52]  # (12.5 + 7.5) kW x10, all normal, score 0.52
    assert bridge.holding(200, 4) == [0, 91, 1, 75]  # no cyber alert, p=0.91, 1 attack, 3 of 4 fine
    assert bridge.holding(300, 4) == [1, 1, 60, 0]  # medium, 1 zone, 100 x (1 - 0.4), no safety alert
    assert bridge.holding(400, 5) == [80, 1, 6, 0, 100]  # 8 of 10 frames fine, 1 camera, 6 workers, hardhat
    assert bridge.holding(500, 4) == [round((72 + 100 + 75 + 60 + 80) / 5), 5, 0, 1]  # status: a WARNING is open

    # A prediction published now wins over the stored one.
    publisher.publish(
        prediction_topic("energy_iforest", machines[2]),
        dump_payload(recent_prediction("energy_iforest", machines[2], 0.83, "anomaly", minutes_ago=-1)),
    )
    wait_until(lambda: bridge.holding(103)[0] == 1, what="the energy anomaly")
    assert bridge.holding(100, 5) == [200, 75, 0, 1, 83]
    writes = bridge.client.write_register(2, 5, device_id=UNIT)
    assert writes.isError() and writes.exception_code == 2  # the compatibility block is read-only


# ---- commands ---------------------------------------------------------------------------------


def test_command_writes_publish_a_command_when_enabled(
    start_bridge: Callable[..., Bridge],
    mqtt_url: str,
    publisher: Publisher,
    site: str,
    mqtt_recorder: Callable[..., MqttRecorder],
    tmp_path: Path,
) -> None:
    store = ServingStore(f"sqlite:///{tmp_path / 'serving.db'}")
    bridge = start_bridge(mqtt_url, writes_enabled=True, book=CommandBook(store.engine))
    robot = f"{site}-robot"
    recorder = mqtt_recorder(command_topic(site, robot))
    publisher.publish(telemetry_topic(site, robot), {"temperature": 40.0})
    slot = bridge.wait_slot(robot)
    base = ASSET_BASE + HR_BLOCK * slot

    # Code 2 (slow), parameter 0.5 as float32 ABCD, sequence 1: one FC 16 write.
    assert not bridge.client.write_registers(base, [2, *float_registers(0.5), 1], device_id=UNIT).isError()
    messages = recorder.wait_for(lambda m: len(m) >= 1, what="the command on MQTT")
    command = json.loads(messages[0].payload)
    assert (command["command"], command["parameters"], command["issued_by"]) == ("slow", {"factor": 0.5}, "modbus")
    assert bridge.holding(base + CommandRegister.RESULT, 2) == [CommandResult.SENT, 1]
    record = CommandBook(store.engine).get(command["command_id"])
    assert record is not None and record.asset_id == robot and record.status == "sent"

    # The asset's acknowledgement shows in the result register.
    ack = CommandAck(
        asset_id=robot, ts=datetime.now(UTC), command_id=command["command_id"], command="slow", status="done"
    )
    publisher.publish(telemetry_topic(site, robot), dump_payload(ack))
    wait_until(lambda: bridge.holding(base + CommandRegister.RESULT)[0] == CommandResult.DONE, what="the ack")

    # Writing the same sequence again sends nothing; an unknown code is refused with exception 3.
    assert not bridge.client.write_register(base + CommandRegister.SEQUENCE, 1, device_id=UNIT).isError()
    bad = bridge.client.write_registers(base, [9, 0, 0, 2], device_id=UNIT)
    assert bad.isError() and bad.exception_code == 3
    assert not bridge.client.write_registers(base, [1, 0, 0, 3], device_id=UNIT).isError()  # stop
    messages = recorder.wait_for(lambda m: len(m) >= 2, what="the second command")
    assert [json.loads(m.payload)["command"] for m in messages] == ["slow", "stop"]
    assert bridge.sender.sent == 2
    store.dispose()


def test_command_writes_are_refused_when_disabled(
    start_bridge: Callable[..., Bridge],
    mqtt_url: str,
    publisher: Publisher,
    site: str,
    mqtt_recorder: Callable[..., MqttRecorder],
) -> None:
    bridge = start_bridge(mqtt_url)  # writes disabled: the default
    robot = f"{site}-robot"
    topic = command_topic(site, robot)
    recorder = mqtt_recorder(topic)
    publisher.publish(telemetry_topic(site, robot), {"temperature": 40.0})
    base = ASSET_BASE + HR_BLOCK * bridge.wait_slot(robot)
    refused = bridge.client.write_registers(base, [1, 0, 0, 1], device_id=UNIT)
    assert refused.isError() and refused.exception_code == 1  # illegal function
    assert bridge.holding(base, 4) == [0, 0, 0, 0] and bridge.header(Header.WRITES_ENABLED) == 0
    # A marker on the bridge's own connection arrives after anything the refused write could have sent.
    bridge.feed.publish(topic, b"marker")
    messages = recorder.wait_for(lambda m: any(x.payload == b"marker" for x in m), what="the marker")
    assert [m.payload for m in messages] == [b"marker"]
    assert bridge.sender.sent == 0 and bridge.server.refused_writes == 1


# ---- who may write: the writer list ----------------------------------------------------------

WRITER_LOG = "scada_bridge.modbus_server"


@pytest.mark.timeout(60)
def test_a_listed_loopback_writer_sends_a_command(
    start_bridge: Callable[..., Bridge],
    mqtt_url: str,
    publisher: Publisher,
    site: str,
    mqtt_recorder: Callable[..., MqttRecorder],
) -> None:
    bridge = start_bridge(mqtt_url, writes_enabled=True, writers=["127.0.0.1"])
    robot = f"{site}-robot"
    recorder = mqtt_recorder(command_topic(site, robot))
    publisher.publish(telemetry_topic(site, robot), {"temperature": 40.0})
    base = ASSET_BASE + HR_BLOCK * bridge.wait_slot(robot)
    assert not bridge.client.write_registers(base, [1, 0, 0, 1], device_id=UNIT).isError()
    messages = recorder.wait_for(lambda m: len(m) >= 1, what="the command on MQTT")
    assert json.loads(messages[0].payload)["command"] == "stop"
    assert bridge.holding(base + CommandRegister.RESULT, 2) == [CommandResult.SENT, 1]
    assert bridge.server.refused_writes == 0


@pytest.mark.timeout(60)
def test_writes_from_an_unlisted_address_are_refused_reads_stay_open_and_the_log_stays_quiet(
    start_bridge: Callable[..., Bridge],
    mqtt_url: str,
    publisher: Publisher,
    site: str,
    mqtt_recorder: Callable[..., MqttRecorder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = start_bridge(mqtt_url, writes_enabled=True, writers=["10.9.9.9"])  # the test runs on 127.0.0.1
    robot = f"{site}-robot"
    topic = command_topic(site, robot)
    recorder = mqtt_recorder(topic)
    publisher.publish(telemetry_topic(site, robot), {"temperature": 40.5})
    slot = bridge.wait_slot(robot)
    base = ASSET_BASE + HR_BLOCK * slot
    caplog.set_level(logging.INFO, logger=WRITER_LOG)

    for sequence in (1, 2, 3):  # a PLC retrying, or a scanner: refused each time, logged once
        refused = bridge.client.write_registers(base, [1, 0, 0, sequence], device_id=UNIT)
        assert refused.isError() and refused.exception_code == NOT_A_WRITER == 1
    single = bridge.client.write_register(base + CommandRegister.SEQUENCE, 4, device_id=UNIT)  # FC 6 too
    assert single.isError() and single.exception_code == 1
    assert bridge.server.refused_writes == 4
    refusals = [r.getMessage() for r in caplog.records if r.name == WRITER_LOG and "refused" in r.getMessage()]
    assert len(refusals) == 1 and "127.0.0.1" in refusals[0] and "10.9.9.9" in refusals[0], refusals

    # Nothing was written or sent; reads answer as before, and the header still says writes are on.
    assert bridge.holding(base, 4) == [0, 0, 0, 0]
    assert bridge.header(Header.WRITES_ENABLED) == 1
    wait_until(lambda: bridge.point(slot, "robot/temperature") == 40.5, what="the reading over Modbus")
    bridge.feed.publish(topic, b"marker")  # arrives after anything a refused write could have sent
    messages = recorder.wait_for(lambda m: any(x.payload == b"marker" for x in m), what="the marker")
    assert [m.payload for m in messages] == [b"marker"] and bridge.sender.sent == 0


@pytest.mark.timeout(60)
def test_a_listed_and_an_unlisted_client_side_by_side(
    start_bridge: Callable[..., Bridge],
    mqtt_url: str,
    publisher: Publisher,
    site: str,
    mqtt_recorder: Callable[..., MqttRecorder],
) -> None:
    bridge = start_bridge(mqtt_url, writes_enabled=True, writers=["127.0.0.2"])
    writer = ModbusTcpClient("127.0.0.1", port=bridge.server.port, source_address=("127.0.0.2", 0), timeout=5)
    assert writer.connect()
    try:
        robot = f"{site}-robot"
        recorder = mqtt_recorder(command_topic(site, robot))
        publisher.publish(telemetry_topic(site, robot), {"temperature": 40.0})
        base = ASSET_BASE + HR_BLOCK * bridge.wait_slot(robot)

        # The bridge's own client connects from 127.0.0.1: not listed, so not even loopback may write.
        refused = bridge.client.write_registers(base, [1, 0, 0, 1], device_id=UNIT)
        assert refused.isError() and refused.exception_code == 1
        # The same write from 127.0.0.2 becomes a command.
        assert not writer.write_registers(base, [2, *float_registers(0.25), 1], device_id=UNIT).isError()
        messages = recorder.wait_for(lambda m: len(m) >= 1, what="the listed writer's command")
        # Both writes go out on one MQTT connection, in order: a command from the refused one would be first.
        assert [json.loads(m.payload)["command"] for m in messages] == ["slow"]
        assert bridge.sender.sent == 1 and bridge.server.refused_writes == 1
        # Both read the result alike.
        assert writer.read_holding_registers(base + CommandRegister.RESULT, count=2, device_id=UNIT).registers == [
            CommandResult.SENT,
            1,
        ]
        assert bridge.holding(base + CommandRegister.RESULT, 2) == [CommandResult.SENT, 1]
    finally:
        writer.close()


def test_the_refusal_log_reports_an_address_once_a_minute_with_the_count_it_kept_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    refusals = RefusalLog(interval_s=60.0, clock=lambda: now[0])
    writers = WriterList([ipaddress.ip_network("10.0.6.0/24")])
    caplog.set_level(logging.WARNING, logger=WRITER_LOG)
    assert [refusals.refused("10.0.7.1", writers) for _ in range(3)] == [True, False, False]
    assert refusals.refused("10.0.7.2", writers)  # another address has its own minute
    now[0] += 59.0
    assert not refusals.refused("10.0.7.1", writers)
    now[0] += 1.0
    assert refusals.refused("10.0.7.1", writers)
    lines = [r.getMessage() for r in caplog.records if r.name == WRITER_LOG]
    assert len(lines) == 3 and "(3 more refused since the last report)" in lines[-1]
    assert "10.0.6.0/24" in lines[0]


def test_the_writer_list_defaults_to_loopback_and_matches_networks() -> None:
    loopback = WriterList()
    assert loopback.allows(ipaddress.ip_address("127.0.0.5")) and loopback.allows(ipaddress.ip_address("::1"))
    assert not loopback.allows(ipaddress.ip_address("10.0.5.20")) and not loopback.allows(None)
    plant = WriterList([ipaddress.ip_network("10.0.5.20"), ipaddress.ip_network("10.0.6.0/24")])
    assert plant.allows(ipaddress.ip_address("10.0.6.77")) and plant.allows(ipaddress.ip_address("10.0.5.20"))
    assert not plant.allows(ipaddress.ip_address("10.0.5.21")) and not plant.allows(ipaddress.ip_address("127.0.0.1"))


def test_writer_settings_parse_lists_and_a_bad_entry_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env or factory.yaml
    monkeypatch.setenv("FACTORY_MODBUS_WRITERS", "10.0.5.20, 10.0.6.0/24")
    assert [str(n) for n in load_settings().modbus_writers] == ["10.0.5.20/32", "10.0.6.0/24"]
    monkeypatch.setenv("FACTORY_MODBUS_WRITERS", '["10.0.5.20", "fd00::/64"]')
    assert [str(n) for n in load_settings().modbus_writers] == ["10.0.5.20/32", "fd00::/64"]
    monkeypatch.setenv("FACTORY_MODBUS_WRITERS", "")
    assert load_settings().modbus_writers == []
    with pytest.raises(ValueError, match="modbus_writers entry '10.0.6.5/24': host bits set, write 10.0.6.0/24"):
        load_settings(modbus_writers=["10.0.6.5/24"])

    # `factory bridge` with a typo: one message naming the setting and the entry, exit 2, nothing served.
    monkeypatch.setenv("FACTORY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FACTORY_MODBUS_WRITERS", "10.0.5.20,10.0.5.300")
    app = typer.Typer()
    app.command()(bridge_command)
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "modbus_writers entry '10.0.5.300' is not an IP address or CIDR network" in said


# ---- broker outage ----------------------------------------------------------------------------


def test_broker_outage_keeps_values_stale_then_recovers(
    start_bridge: Callable[..., Bridge], free_port: Callable[[], int], tmp_path: Path, site: str
) -> None:
    port = free_port()
    broker = start_local_broker(port, tmp_path / "broker", prefer="mosquitto")
    try:
        bridge = start_bridge(broker.url)
        robot = f"{site}-robot"
        pub = Publisher(broker.url)
        pub.publish(telemetry_topic(site, robot), {"temperature": 50.5})
        pub.close()
        slot = bridge.wait_slot(robot)
        wait_until(lambda: bridge.point(slot, "robot/temperature") == 50.5, what="the first reading")
        assert bridge.block(slot)[AssetRegister.QUALITY] == Quality.GOOD

        broker.process.kill()  # type: ignore[union-attr]
        broker.process.wait(10)  # type: ignore[union-attr]
        wait_until(lambda: bridge.block(slot)[AssetRegister.QUALITY] == Quality.STALE, what="quality stale")
        assert bridge.point(slot, "robot/temperature") == 50.5  # the last reading is kept
        assert bridge.header(Header.BROKER_CONNECTED) == 0 and bridge.asset_bits(slot)[AssetBit.QUALITY_STALE]
        assert bridge.holding(503) == [1]  # degraded

        broker = start_local_broker(port, tmp_path / "broker", prefer="mosquitto")
        wait_until(lambda: bridge.header(Header.BROKER_CONNECTED) == 1, timeout=15, what="the bridge reconnected")
        assert bridge.block(slot)[AssetRegister.QUALITY] == Quality.STALE  # nothing new about this asset yet
        pub = Publisher(broker.url)
        pub.publish(telemetry_topic(site, robot), {"temperature": 52.0})
        pub.close()
        wait_until(lambda: bridge.point(slot, "robot/temperature") == 52.0, what="a new reading after the outage")
        assert bridge.block(slot)[AssetRegister.QUALITY] == Quality.GOOD
        assert bridge.asset_bits(slot)[AssetBit.QUALITY_GOOD]
    finally:
        broker.stop()


def test_the_readme_shows_the_register_map_the_code_serves() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    shown = readme.split("<!-- register-map:start -->\n", 1)[1].split("\n<!-- register-map:end -->", 1)[0]
    served = format_register_map(RegisterLayout.of(DEFAULT_MAX_ASSETS, POINTS))
    demoted = "\n".join(("##" + line) if line.startswith("#") else line for line in served.splitlines())
    assert shown.strip() == demoted.strip(), (
        "README's register map is stale: paste `factory bridge --print-register-map`"
    )


def test_the_dnp3_point_list_covers_every_point_once() -> None:
    listed = dnp3_points()
    analog = [d for d in listed if (d.group, d.variation) == (30, 5)]
    binary = [d for d in listed if (d.group, d.variation) == (1, 2)]
    assert len(analog) + len(binary) == len(POINTS) and {d.point.key for d in listed} == {p.key for p in POINTS}
    assert [d.index for d in analog] == list(range(len(analog))) and [d.index for d in binary] == [0, 1, 2]
    assert analog[0].point.key == telemetry_points()[0].key  # same order as the Modbus float block
    assert "| binary input (open alerts) | 2 | g1v2 | `alerts/open_critical` |" in format_dnp3_points()
