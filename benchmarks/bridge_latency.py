"""Latency from an MQTT publish to the new value at an OPC UA subscription and at a Modbus read.

Runs, on a Mosquitto of its own (free port, temporary data dir), the simulated fleet as a
subprocess (`factory simulate`, the same fleet `factory up` starts unless sized otherwise) and, in
this process, the SCADA bridge as `factory bridge` runs it: state, MQTT feed, OPC UA server
(security none) and Modbus TCP server in one asyncio loop. Beside the fleet a probe robot
(`bench-probe`) publishes a new temperature every `--interval` seconds, and three observers time
each value from just before its publish:

- baseline: a bare paho subscriber on the probe's topic (broker and client transport only);
- OPC UA: an asyncua client's data-change subscription on Telemetry/robot/temperature (publishing
  interval `--opcua-interval-ms`), in the bridge's loop as a local HMI would share the machine;
- Modbus: a pymodbus client polling the probe's float32 input registers every `--modbus-poll-ms`
  from a thread, as a PLC or SCADA poll would (the poll period bounds what it can see).

Prints one JSON object: p50 / p95 / max in milliseconds per observer, probes lost, the fleet's
message rate the bridge took meanwhile.

    .venv/bin/python benchmarks/bridge_latency.py                      # 200 probes, default fleet
    .venv/bin/python benchmarks/bridge_latency.py --probes 20 --rate 5 # small run, a busier fleet
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Client, Node
from latency import _free_port, _quantile  # noqa: E402 - the benchmarks' shared port and quantile helpers
from pymodbus.client import ModbusTcpClient

from factory_pipelines.broker import start_local_broker
from factory_pipelines.mqtt import connect_and_wait, make_client
from factory_pipelines.telemetry import telemetry_topic
from scada_bridge.feed import BridgeFeed
from scada_bridge.modbus_map import ASSET_BASE, IR_BLOCK, AssetSlots, RegisterMap
from scada_bridge.modbus_server import ModbusBridgeServer
from scada_bridge.opcua_server import NAMESPACE_URI, OpcUaBridgeServer
from scada_bridge.state import BridgeState

SITE = "bench"
PROBE = "bench-probe"
POINT = "robot/temperature"
WAIT_PER_PROBE_S = 5.0


def _summary(latencies_s: list[float], probes: int) -> dict[str, Any]:
    if not latencies_s:
        return {"samples": 0, "lost": probes}
    ms = [1000.0 * v for v in latencies_s]
    return {
        "samples": len(ms),
        "lost": probes - len(ms),
        "p50_ms": round(_quantile(ms, 0.5), 2),
        "p95_ms": round(_quantile(ms, 0.95), 2),
        "max_ms": round(max(ms), 2),
    }


class Seen:
    """First time each probe value reached an observer (perf_counter), thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.at: dict[float, float] = {}

    def mark(self, value: float, when: float) -> None:
        with self._lock:
            self.at.setdefault(value, when)

    def has(self, value: float) -> bool:
        with self._lock:
            return value in self.at


class OpcUaChanges:
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        if isinstance(val, float):
            self.seen.mark(val, time.perf_counter())


class ModbusPoller(threading.Thread):
    """Reads the probe's two registers every poll period, as a SCADA poll does."""

    def __init__(self, port: int, address: int, poll_s: float, seen: Seen) -> None:
        super().__init__(name="bench-modbus-poll", daemon=True)
        self.client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
        self.address, self.poll_s, self.seen = address, poll_s, seen
        self.stop = threading.Event()
        self.reads = 0

    def run(self) -> None:
        if not self.client.connect():
            raise RuntimeError("the Modbus client did not connect")
        while not self.stop.is_set():
            response = self.client.read_input_registers(self.address, count=2, device_id=1)
            now = time.perf_counter()
            if not response.isError():
                self.reads += 1
                self.seen.mark(struct.unpack(">f", struct.pack(">HH", *response.registers))[0], now)
            self.stop.wait(self.poll_s)
        self.client.close()


async def _until(check: Any, timeout: float, what: str) -> Any:
    """Poll `check` (sync or async) on the loop until it is truthy; the bridge keeps serving meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check() if asyncio.iscoroutinefunction(check) else check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.002)


def _start_simulator(args: argparse.Namespace, mqtt_url: str, data: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY_", "MLFLOW_", "DAGSTER_"))}
    env.update(FACTORY_DATA_DIR=str(data), FACTORY_MQTT_URL=mqtt_url, FACTORY_SITE=SITE)
    command = [sys.executable, "-m", "factory_pipelines.cli", "simulate", "--rate", str(args.rate)]
    for name in ("machines", "robots", "safety_stations", "cameras"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    log = (data / "simulator.log").open("wb")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="bridge-latency-"))
    broker = start_local_broker(_free_port(), data / "broker")
    simulator = _start_simulator(args, broker.url, data)
    state = BridgeState(site=SITE, max_assets=200)
    feed = BridgeFeed(state, broker.url)
    register_map = RegisterMap(state, AssetSlots(200, data / "slots.json"))
    modbus = ModbusBridgeServer(register_map, port=_free_port())
    opcua = OpcUaBridgeServer(
        state,
        host="127.0.0.1",
        port=_free_port(),
        security="none",
        users={},
        cert_dir=data / "certs",
        commands=None,
        acknowledge=None,
        site=SITE,
    )
    publisher = make_client(f"bench-probe-{os.getpid()}")
    baseline_client = make_client(f"bench-baseline-{os.getpid()}")
    seen = {"baseline": Seen(), "opcua": Seen(), "modbus": Seen()}
    poller: ModbusPoller | None = None
    client: Client | None = None
    sent: dict[float, float] = {}
    try:
        await modbus.start()
        await opcua.start()
        feed.start()
        if not await asyncio.to_thread(feed.wait_connected, 15):
            raise RuntimeError("the bridge did not connect to the broker")
        connect_and_wait(publisher, broker.url)
        subscribed = threading.Event()
        baseline_client.on_subscribe = lambda *_: subscribed.set()
        baseline_client.on_message = lambda _c, _u, m: seen["baseline"].mark(
            float(json.loads(m.payload)["temperature"]), time.perf_counter()
        )
        connect_and_wait(baseline_client, broker.url)
        baseline_client.subscribe(telemetry_topic(SITE, PROBE), qos=1)
        if not await asyncio.to_thread(subscribed.wait, 10):
            raise RuntimeError("no SUBACK for the baseline subscriber")
        await _until(lambda: len(state.assets()) >= 3, 60, "the simulated fleet on the bridge")

        # Warm-up probe: creates the probe's node and Modbus slot.
        publisher.publish(telemetry_topic(SITE, PROBE), json.dumps({"temperature": 1.0}), qos=1)
        await _until(lambda: register_map.slots.slot_of(PROBE) is not None, 10, "the probe's Modbus slot")
        slot = register_map.slots.slot_of(PROBE)
        assert slot is not None
        address = ASSET_BASE + IR_BLOCK * slot + register_map.layout.offsets[POINT]
        client = Client(opcua.endpoint, timeout=10)
        await client.connect()
        idx = await client.get_namespace_index(NAMESPACE_URI)
        path = [f"{idx}:{name}" for name in ("Factory", SITE, PROBE, "Telemetry", "robot", "temperature")]

        async def node() -> Node | None:
            try:
                return await client.nodes.objects.get_child(path)  # type: ignore[union-attr]
            except Exception:
                return None

        temperature = await _until(node, 10, "the probe's OPC UA node")
        subscription = await client.create_subscription(args.opcua_interval_ms, OpcUaChanges(seen["opcua"]))
        await subscription.subscribe_data_change(temperature)
        revised_ms = subscription.parameters.RequestedPublishingInterval
        poller = ModbusPoller(modbus.port, address, args.modbus_poll_ms / 1000.0, seen["modbus"])
        poller.start()
        await _until(lambda: all(s.has(1.0) for s in seen.values()), 10, "the warm-up probe everywhere")

        accepted_before, started = state.stats().accepted, time.monotonic()
        for number in range(args.probes):
            value = 20.0 + 0.5 * number  # exact in float32
            sent[value] = time.perf_counter()
            publisher.publish(telemetry_topic(SITE, PROBE), json.dumps({"temperature": value}), qos=1)
            deadline = time.monotonic() + WAIT_PER_PROBE_S
            while not all(s.has(value) for s in seen.values()) and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            await asyncio.sleep(args.interval)  # pacing between probes, not synchronisation
        elapsed = time.monotonic() - started
        fleet_rate = (state.stats().accepted - accepted_before - args.probes) / elapsed
    finally:
        if poller is not None:
            poller.stop.set()
            poller.join(5)
        if client is not None:
            await client.disconnect()
        await opcua.stop()
        await modbus.stop()
        await asyncio.to_thread(feed.stop)
        register_map.close()
        for mqtt_client in (publisher, baseline_client):
            mqtt_client.disconnect()
            mqtt_client.loop_stop()
        if simulator.poll() is None:
            os.killpg(simulator.pid, signal.SIGTERM)
            try:
                simulator.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(simulator.pid, signal.SIGKILL)
        broker.stop()

    def latencies(name: str) -> list[float]:
        return [seen[name].at[v] - t for v, t in sent.items() if v in seen[name].at]

    return {
        "benchmark": "bridge_latency",
        "probes": args.probes,
        "interval_s": args.interval,
        "fleet": {
            "machines": args.machines,
            "robots": args.robots,
            "safety_stations": args.safety_stations,
            "cameras": args.cameras,
            "cleanrooms": 1,
            "rate_hz_per_asset": args.rate,
            "messages_per_s_at_bridge": round(fleet_rate, 1),
            "assets_at_bridge": len(state.assets()),
        },
        "broker": broker.kind,
        "baseline_mqtt_subscriber": _summary(latencies("baseline"), args.probes),
        "opcua_subscription": {
            **_summary(latencies("opcua"), args.probes),
            "publishing_interval_ms": revised_ms,
        },
        "modbus_read": {
            **_summary(latencies("modbus"), args.probes),
            "poll_ms": args.modbus_poll_ms,
            "reads": poller.reads if poller else 0,
        },
    }


RESULTS = Path(__file__).resolve().parent / "results" / "bridge_latency.md"


def render(result: dict[str, Any], command: str) -> str:
    """results/bridge_latency.md: the run's table, and what the figures mean."""
    fleet = result["fleet"]

    def row(observer: str, figures: dict[str, Any]) -> str:
        if not figures["samples"]:
            return f"| {observer} | 0 | {figures['lost']} | - | - | - |"
        return (
            f"| {observer} | {figures['samples']} | {figures['lost']} | {figures['p50_ms']:.2f} "
            f"| {figures['p95_ms']:.2f} | {figures['max_ms']:.1f} |"
        )

    opcua, modbus = result["opcua_subscription"], result["modbus_read"]
    return "\n".join(
        [
            "# SCADA bridge latency",
            "",
            f"`{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {result['broker']}: the "
            f"simulated fleet (`factory simulate`: {fleet['machines']} machines, {fleet['robots']} robots, "
            f"{fleet['safety_stations']} safety stations, {fleet['cameras']} camera(s) and the cleanroom, "
            f"{fleet['assets_at_bridge']} assets, about {fleet['messages_per_s_at_bridge']:g} messages/s at the "
            "bridge) "
            f"with a probe robot publishing a new temperature every {result['interval_s']:g} s; {result['probes']} "
            "probes timed from just before each publish.",
            "",
            "| observer | samples | lost | p50 ms | p95 ms | max ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            row("paho subscriber on the probe's topic (baseline)", result["baseline_mqtt_subscriber"]),
            row(
                f"OPC UA data-change subscription (publishing interval {opcua['publishing_interval_ms']:g} ms)",
                opcua,
            ),
            row(f"Modbus TCP read of the probe's float32 (polled every {modbus['poll_ms']:g} ms)", modbus),
            "",
            "Target: values follow MQTT within 1 s. Most of each figure is the client's own period: the publishing",
            "interval the OPC UA client asks for and the Modbus poll period; the bridge's part (MQTT receipt to its",
            "state) is about the baseline's.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=200, help="Probe values to time.")
    parser.add_argument("--interval", type=float, default=0.1, help="Seconds between probes once one is seen.")
    parser.add_argument("--rate", type=float, default=1.0, help="Simulator messages per asset per second.")
    parser.add_argument("--machines", type=int, default=5)
    parser.add_argument("--robots", type=int, default=3)
    parser.add_argument("--safety-stations", type=int, default=2)
    parser.add_argument("--cameras", type=int, default=1)
    parser.add_argument("--opcua-interval-ms", type=float, default=20.0, help="OPC UA publishing interval asked for.")
    parser.add_argument("--modbus-poll-ms", type=float, default=5.0, help="Modbus poll period.")
    parser.add_argument("--no-write", action="store_true", help="Print only; don't write results/bridge_latency.md.")
    parser.add_argument("--json-out", type=Path, help="Also write the figures as JSON here.")
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    print(json.dumps(result, indent=2))
    if not args.no_write:
        command = shlex.join([".venv/bin/python", "benchmarks/bridge_latency.py", *sys.argv[1:]])
        RESULTS.write_text(render(result, command))
        print(f"wrote {RESULTS}")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
