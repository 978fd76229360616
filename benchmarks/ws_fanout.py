"""WebSocket fan-out: event delay from an MQTT publish to its receipt by each of N `/ws` clients.

Starts a broker (Mosquitto when installed) and `factory serve` in a process of its own (a fresh
data dir, free ports, anonymous reads on), connects N WebSocket clients to `/ws` from this
process (one asyncio loop; a client only timestamps what it receives, parsing comes after the
run), then publishes M robot telemetry messages at a fixed rate. A message's delay for a client
is the time from just before its publish to the client's receipt of its `telemetry` event.

The baseline, in the same run and the same process: a plain paho subscriber on the same topic,
timestamping the same messages. Reported: p50 / p95 / max of both, their ratio, and how many
(client, message) pairs never arrived. Each client gets every channel by default, as the
dashboard does (each message is also a `robot_update`); `--channels telemetry` subscribes to
telemetry only. Clients negotiate permessage-deflate like browsers unless `--no-compression`.

    .venv/bin/python benchmarks/ws_fanout.py                           # 200 clients, 300 messages at 20/s
    .venv/bin/python benchmarks/ws_fanout.py --clients 20 --messages 50 --rate 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from latency import _free_port, _quantile  # noqa: E402 - the benchmarks' shared port and quantile helpers
from websockets.asyncio.client import ClientConnection, connect

from factory_pipelines.broker import start_local_broker
from factory_pipelines.mqtt import connect_and_wait, make_client
from factory_pipelines.telemetry import RobotTelemetry, dump_payload, telemetry_topic, utc_now

SITE = "bench"
ROBOT = "bench-robot"
TELEMETRY_PREFIX = '{"type":"telemetry"'  # how the hub starts a telemetry message (cheap to test on receipt)
START_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 30.0


def _summary_ms(delays_s: list[float]) -> dict[str, float | int | None]:
    if not delays_s:
        return {"samples": 0, "p50_ms": None, "p95_ms": None, "max_ms": None, "mean_ms": None}
    return {
        "samples": len(delays_s),
        "p50_ms": round(_quantile(delays_s, 0.50) * 1000, 3),
        "p95_ms": round(_quantile(delays_s, 0.95) * 1000, 3),
        "max_ms": round(max(delays_s) * 1000, 3),
        "mean_ms": round(statistics.fmean(delays_s) * 1000, 3),
    }


@dataclass
class Receipts:
    """What one receiver saw: (monotonic time, raw text or seq), parsed after the run."""

    raw: list[tuple[float, str]] = field(default_factory=list)

    def by_seq(self) -> dict[int, float]:
        found: dict[int, float] = {}
        for received_at, text in self.raw:
            seq = json.loads(text)["payload"]["reading"]["seq"]
            found.setdefault(seq, received_at)
        return found


class BaselineSubscriber:
    """A plain paho subscriber on the robot's topic: receipt time per seq, nothing else."""

    def __init__(self, url: str) -> None:
        self.received: dict[int, float] = {}
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = make_client(f"bench-baseline-{os.getpid()}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        connect_and_wait(self.client, url)
        self.client.subscribe(telemetry_topic(SITE, ROBOT), qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("no SUBACK for the baseline subscriber")

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        received_at = time.monotonic()
        seq = json.loads(message.payload)["seq"]
        with self._lock:
            self.received.setdefault(seq, received_at)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    data: Path
    api: str
    ws: str
    mqtt_url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_server(data: Path, mqtt_url: str) -> Server:
    """`factory serve` in a process of its own, with anonymous reads; waits for /health."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY_", "MLFLOW_", "DAGSTER_"))}
    env.update(
        FACTORY_DATA_DIR=str(data),
        FACTORY_MQTT_URL=mqtt_url,
        FACTORY_API_PORT=str(port),
        FACTORY_SITE=SITE,
        FACTORY_ALLOW_ANONYMOUS_READ="true",
    )
    log = (data / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "factory_pipelines.cli", "serve"],
        env=env,
        cwd=data,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(process, data, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws", mqtt_url)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"factory serve exited; see {data / 'serve.log'}")
        try:
            if httpx.get(f"{server.api}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"factory serve did not answer within {START_TIMEOUT_S:g} s; see {data / 'serve.log'}")


def robot_message(seq: int) -> bytes:
    reading = RobotTelemetry(
        asset_id=ROBOT,
        ts=utc_now(),
        seq=seq,
        temperature=41.5,
        health_score=88.0,
        state="running",
        vibration={"rms": 0.05, "kurtosis": 3.1},
    )
    return dump_payload(reading)


async def _client(url: str, receipts: Receipts, ready: asyncio.Event, channels: str, compression: bool) -> None:
    """One dashboard-like client: wait for init, subscribe, then timestamp every telemetry event."""
    options: dict[str, Any] = {"open_timeout": 30, "max_size": None}
    if not compression:
        options["compression"] = None
    async with connect(url, **options) as websocket:
        first = await websocket.recv()
        assert json.loads(first)["type"] == "init", "the first message is not init"
        if channels != "all":
            await websocket.send(json.dumps({"type": "subscribe", "channels": channels.split(",")}))
        ready.set()
        await _read(websocket, receipts)


async def _read(websocket: ClientConnection, receipts: Receipts) -> None:
    async for message in websocket:
        received_at = time.monotonic()
        if isinstance(message, str) and message.startswith(TELEMETRY_PREFIX):
            receipts.raw.append((received_at, message))


def _publish_loop(url: str, messages: int, rate: float, sent: dict[int, float], done: threading.Event) -> None:
    """Publish seq 1..messages at `rate` per second (QoS 1), recording each publish time."""
    publisher = make_client(f"bench-publisher-{os.getpid()}")
    connect_and_wait(publisher, url)
    topic = telemetry_topic(SITE, ROBOT)
    start = time.monotonic()
    try:
        for seq in range(1, messages + 1):
            due = start + (seq - 1) / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            payload = robot_message(seq)
            sent[seq] = time.monotonic()
            publisher.publish(topic, payload, qos=1)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        done.set()


async def _warm_up(url: str, clients: list[Receipts], baseline: BaselineSubscriber) -> None:
    """Publish seq 0 until every client and the baseline have one: the server's feed is subscribed."""
    publisher = make_client(f"bench-warmup-{os.getpid()}")
    connect_and_wait(publisher, url)
    try:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while not (baseline.received.get(0) and all(r.raw for r in clients)):
            if time.monotonic() > deadline:
                raise RuntimeError("warm-up messages did not reach every client")
            publisher.publish(telemetry_topic(SITE, ROBOT), robot_message(0), qos=1)
            await asyncio.sleep(0.2)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
    for receipts in clients:
        receipts.raw.clear()
    baseline.received.clear()


async def run_benchmark(
    server: Server, clients: int, messages: int, rate: float, channels: str, compression: bool
) -> dict[str, Any]:
    receipts = [Receipts() for _ in range(clients)]
    readies = [asyncio.Event() for _ in range(clients)]
    baseline = BaselineSubscriber(server.mqtt_url)
    tasks = [
        asyncio.create_task(_client(server.ws, r, ready, channels, compression))
        for r, ready in zip(receipts, readies, strict=True)
    ]
    try:
        connect_started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in readies)), SETTLE_TIMEOUT_S * 2)
        connect_s = time.monotonic() - connect_started
        await _warm_up(server.mqtt_url, receipts, baseline)

        sent: dict[int, float] = {}
        done = threading.Event()
        publisher = threading.Thread(
            target=_publish_loop, args=(server.mqtt_url, messages, rate, sent, done), daemon=True
        )
        publisher.start()
        while not done.is_set():
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:  # the last message, everywhere (or give up and count it missing)
            if all(r.raw and json.loads(r.raw[-1][1])["payload"]["reading"]["seq"] == messages for r in receipts):
                break
            await asyncio.sleep(0.05)
        failed = [t for t in tasks if t.done() and t.exception() is not None]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        baseline.close()

    ws_delays: list[float] = []
    missing = 0
    for r in receipts:
        seen = r.by_seq()
        for seq, published_at in sent.items():
            if seq in seen:
                ws_delays.append(seen[seq] - published_at)
            else:
                missing += 1
    base_delays = [baseline.received[s] - t for s, t in sent.items() if s in baseline.received]
    ws, base = _summary_ms(ws_delays), _summary_ms(base_delays)

    def ratio(key: str) -> float | None:
        ours, theirs = ws[key], base[key]
        return round(float(ours) / float(theirs), 2) if ours is not None and theirs else None

    return {
        "clients": clients,
        "messages": messages,
        "rate_per_s": rate,
        "channels": channels,
        "compression": compression,
        "connect_s": round(connect_s, 3),
        "clients_failed": len(failed),
        "ws_event_delay": ws | {"missing": missing},
        "baseline_paho_delay": base | {"missing": messages - len(base_delays)},
        "ratio_p50": ratio("p50_ms"),
        "ratio_p95": ratio("p95_ms"),
        "cores": os.cpu_count(),
    }


RESULTS = Path(__file__).resolve().parent / "results" / "ws_fanout.md"


def render(result: dict[str, Any], command: str) -> str:
    """results/ws_fanout.md: the run's table, and what the figures mean."""
    ws, base = result["ws_event_delay"], result["baseline_paho_delay"]
    compression = "permessage-deflate as browsers negotiate it" if result["compression"] else "no compression"

    def row(path: str, figures: dict[str, Any]) -> str:
        if not figures["samples"]:
            return f"| {path} | 0 | - | - | - | {figures['missing']:,} |"
        return (
            f"| {path} | {figures['samples']:,} | {figures['p50_ms']:.2f} | {figures['p95_ms']:.2f} "
            f"| {figures['max_ms']:.1f} | {figures['missing']:,} |"
        )

    return "\n".join(
        [
            "# WebSocket fan-out",
            "",
            f"`{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {result['cores']} cores, {result['broker']}: "
            f"{result['clients']} clients on `/ws` (channels: {result['channels']}, {compression}), "
            f"{result['messages']} robot telemetry messages published at {result['rate_per_s']:g}/s; a message's "
            "delay is from just before its publish to a client's receipt of its `telemetry` event. Baseline in the "
            "same run: a plain paho subscriber timestamping the same messages.",
            "",
            "| path | samples | p50 ms | p95 ms | max ms | missing |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            row(f"MQTT -> API -> {result['clients']} WebSocket clients", ws),
            row("MQTT -> paho subscriber (baseline)", base),
            "",
            f"Ratio to the baseline: p50 {result['ratio_p50']}x, p95 {result['ratio_p95']}x; "
            f"{result['clients_failed']} clients failed. With every channel each message is also a `robot_update`",
            "per client, so the server sends two frames per message and client; most of the delay is compressing",
            "and writing those frames one client after another in one Python process (`--no-compression` shows",
            "the share of compression).",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0, help="telemetry messages per second")
    parser.add_argument("--channels", default="all", help="'all' or a comma-separated list, e.g. telemetry")
    parser.add_argument("--no-compression", action="store_true", help="clients decline permessage-deflate")
    parser.add_argument("--keep", action="store_true", help="keep the data dir (logs) afterwards")
    parser.add_argument("--no-write", action="store_true", help="print only; don't write results/ws_fanout.md")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="ws-fanout-"))
    broker = start_local_broker(_free_port(), data / "broker")
    server: Server | None = None
    try:
        server = start_server(data, broker.url)
        result = asyncio.run(
            run_benchmark(server, args.clients, args.messages, args.rate, args.channels, not args.no_compression)
        )
        result["broker"] = broker.kind
        print(json.dumps(result, indent=2))
    finally:
        if server is not None:
            server.stop()
        broker.stop()
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
        else:
            print(f"data and logs kept in {data}", file=sys.stderr)
    if not args.no_write:
        command = shlex.join([".venv/bin/python", "benchmarks/ws_fanout.py", *sys.argv[1:]])
        RESULTS.write_text(render(result, command))
        print(f"wrote {RESULTS}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"benchmark": "ws_fanout", **result}, indent=1))


if __name__ == "__main__":
    main()
