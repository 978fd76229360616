"""Ingest throughput: the window collector (durable, zero loss) against a bare paho subscriber.

Both drain the same kind of QoS 1 stream from the same Mosquitto in the same run:

* bare: paho subscriber, QoS 1, auto-ack, counts messages and does nothing else (the ceiling);
* collector: `sensors.collector.Collector` with the platform's default settings (group commit every
  collector_flush_ms or half its ReceiveMaximum, part files fsynced, windows sealed to Parquet).

Two scenarios per subscriber:

* live: the subscriber is connected while a publisher process sends N messages as fast as it can;
* backlog: N messages are queued in the subscriber's persistent session while it is away, then it
  reconnects and drains them (no publisher competing for the CPU: the subscriber's own ceiling).

Rate = N / (time from the first message received (live) or from connecting (backlog) to the last
one counted; for the collector: written durably). Zero loss is checked for the collector by reading
back its sealed windows.

Both scenarios default to 30,000 messages. The backlog's time includes the collector's start-up, and
on a fast host a 10,000-message backlog drained in a third of a second, so that start-up weighed in
the ratio (0.88 there against 0.98 with 40,000, benchmarks/README.md).

    .venv/bin/python benchmarks/ingest.py                  # writes benchmarks/results/ingest.md
    .venv/bin/python benchmarks/ingest.py --messages 20000 --no-write
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from factory_pipelines import mqtt
from factory_pipelines.broker import start_local_broker
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.windows import iter_sealed_keys, read_window
from sensors.collector import DEFAULT_RECEIVE_MAXIMUM, Collector

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "ingest.md"
PUBLISHER_WINDOW = 100  # unacknowledged publishes the publisher keeps in flight
DRAIN_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, timeout: float, poll_s: float = 0.002) -> float:
    """Poll until `condition` holds; returns the moment (perf_counter) it was seen to hold."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll_s)
    return time.perf_counter()


# ---- publisher (a child process, so it does not share the subscriber's GIL) ----


def sample_payload(asset_id: str, seq: int) -> bytes:
    """A robot telemetry message of about 300 bytes, like the simulator's."""
    return json.dumps(
        {
            "asset_id": asset_id,
            "ts": datetime.now(UTC).isoformat(),
            "seq": seq,
            "kind": "robot",
            "vibration": {"rms": 0.31, "kurtosis": 3.2, "bpfo": 0.11, "bpfi": 0.07, "bsf": 0.02, "ftf": 0.01},
            "temperature": 45.3,
            "motor_current": 3.4,
            "cycle_count": 1000 + seq,
            "health_score": 87.5,
            "state": "running",
        }
    ).encode()


def publish(url: str, count: int, prefix: str, assets: int) -> dict[str, float]:
    """Publish `count` QoS 1 messages as fast as the broker acknowledges them (one thread, own loop).

    paho's network thread would fight the publishing thread for the GIL, and paho scans its whole
    in-flight list on every PUBACK, so a small window driven by `loop()` is the fastest Python publisher.
    """
    client = mqtt.make_client(f"bench-pub-{prefix}")
    client.max_inflight_messages_set(PUBLISHER_WINDOW)
    acknowledged = 0

    def _on_publish(*_args: object) -> None:
        nonlocal acknowledged
        acknowledged += 1

    client.on_publish = _on_publish
    mqtt.connect(client, url)
    wait_until(lambda: client.loop(0.05) == 0 and client.is_connected(), "the publisher to connect", 10)
    started = time.perf_counter()
    sent = 0
    while acknowledged < count:
        while sent < count and sent - acknowledged < PUBLISHER_WINDOW:
            asset_id = f"{prefix}-{sent % assets}"
            payload = sample_payload(asset_id, sent // assets)
            client.publish(f"factory/main/{asset_id}/telemetry", payload, qos=1)
            sent += 1
        if client.loop(0.05) != 0:
            raise ConnectionError("publisher lost its connection")
    elapsed = time.perf_counter() - started
    client.disconnect()
    return {"published": sent, "acknowledged": acknowledged, "seconds": elapsed}


def run_publisher(url: str, count: int, prefix: str, assets: int) -> dict[str, float]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--role",
        "publisher",
        "--url",
        url,
        "--messages",
        str(count),
        "--prefix",
        prefix,
        "--assets",
        str(assets),
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO_ROOT, timeout=DRAIN_TIMEOUT_S)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- subscribers ----


class BareSubscriber:
    """paho, QoS 1, auto-ack: receives and counts, nothing else."""

    def __init__(self, url: str, client_id: str) -> None:
        self.url = url
        self.count = 0
        self.seen: set[bytes] = set()
        self.client = mqtt.make_client(client_id)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe("factory/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_message(self, _client: object, _userdata: object, message: object) -> None:
        self.count += 1

    def start(self) -> None:
        mqtt.connect(
            self.client,
            self.url,
            clean_start=False,
            session_expiry_s=600,
            receive_maximum=DEFAULT_RECEIVE_MAXIMUM,
        )
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError("bare subscriber did not subscribe")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class CollectorThread:
    """The real Collector on a thread, as `factory collect` runs it (minus the process)."""

    def __init__(self, settings: FactorySettings) -> None:
        self.collector = Collector(settings, session_expiry_s=600)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.collector.run, args=(self.stop_event,), daemon=True)

    def start(self) -> None:
        self.thread.start()
        if not self.collector.subscribed.wait(20):
            raise TimeoutError("collector did not subscribe")

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)
        if self.thread.is_alive():
            raise TimeoutError("collector did not stop")


@dataclass
class Result:
    subscriber: str
    scenario: str
    messages: int
    seconds: float
    publisher_rate: float | None
    lost: int
    duplicates: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def measure_live(
    counter: Callable[[], int], received: Callable[[], int], count: int, start: Callable[[], None]
) -> float:
    """Seconds from the first message received to `counter()` reaching `count` (publisher started by `start`)."""
    start()
    first = wait_until(lambda: received() > 0, "the first message", DRAIN_TIMEOUT_S)
    last = wait_until(lambda: counter() >= count, f"{count} messages", DRAIN_TIMEOUT_S)
    return last - first


def measure_backlog(counter: Callable[[], int], count: int, connect: Callable[[], None]) -> float:
    """Seconds from connecting (`connect`) to `counter()` reaching `count`.

    Timed from the connect, not the first message: the broker starts sending a resumed session's
    queue right after CONNACK, before `connect` returns.
    """
    started = time.perf_counter()
    connect()
    return wait_until(lambda: counter() >= count, f"{count} messages", DRAIN_TIMEOUT_S) - started


def sealed_rows(settings: FactorySettings, prefix: str) -> pl.DataFrame:
    frames = [read_window(settings.windows_dir, key) for key in iter_sealed_keys(settings.windows_dir)]
    return pl.concat(frames).filter(pl.col("asset_id").str.starts_with(f"{prefix}-"))


def bench_bare(url: str, count: int, assets: int, scenario: str, tag: str) -> Result:
    prefix = f"bare-{scenario}-{tag}"
    subscriber = BareSubscriber(url, f"bench-bare-{scenario}-{tag}")
    publisher: dict[str, float] = {}
    subscriber.start()
    if scenario == "backlog":
        subscriber.stop()
        publisher = run_publisher(url, count, prefix, assets)
        subscriber = BareSubscriber(url, f"bench-bare-{scenario}-{tag}")
        seconds = measure_backlog(lambda: subscriber.count, count, subscriber.start)
    else:
        thread = threading.Thread(target=lambda: publisher.update(run_publisher(url, count, prefix, assets)))
        seconds = measure_live(lambda: subscriber.count, lambda: subscriber.count, count, thread.start)
        thread.join()
    lost = max(0, count - subscriber.count)
    subscriber.stop()
    rate = publisher["acknowledged"] / publisher["seconds"] if scenario == "live" else None
    return Result("bare paho (QoS 1, auto-ack)", scenario, count, seconds, rate, lost, subscriber.count - count)


def bench_collector(url: str, data_dir: Path, count: int, assets: int, scenario: str, tag: str) -> Result:
    prefix = f"collector-{scenario}-{tag}"
    settings = load_settings(data_dir=data_dir / prefix, mqtt_url=url, collector_id=prefix)
    settings.ensure_dirs()
    publisher: dict[str, float] = {}
    running = CollectorThread(settings)
    running.start()
    if scenario == "backlog":
        running.stop()
        publisher = run_publisher(url, count, prefix, assets)
        running = CollectorThread(settings)
        collector = running.collector
        seconds = measure_backlog(lambda: collector.stats.rows_written, count, running.start)
    else:
        collector = running.collector
        thread = threading.Thread(target=lambda: publisher.update(run_publisher(url, count, prefix, assets)))
        seconds = measure_live(
            lambda: collector.stats.rows_written, lambda: collector.stats.received, count, thread.start
        )
        thread.join()
    running.stop()
    rows = sealed_rows(settings, prefix)
    unique = rows.select("asset_id", "seq").unique().height
    rate = publisher["acknowledged"] / publisher["seconds"] if scenario == "live" else None
    return Result("collector (durable windows)", scenario, count, seconds, rate, count - unique, rows.height - unique)


def report(results: list[Result], command: str, broker_kind: str, load: str) -> str:
    """Markdown: the median of the rounds per scenario and subscriber, their spread, and the ratios."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for result in results:
        groups.setdefault((result.scenario, result.subscriber), []).append(result)
    settings = load_settings()
    lines = [
        "# Ingest: collector vs bare paho subscriber",
        "",
        f"Made by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {broker_kind} on loopback, load average "
        f"{load} before the run. QoS 1 messages of about {len(sample_payload('bench-0', 0))} bytes; "
        f"median of {max(len(runs) for runs in groups.values())} rounds (interleaved). Collector with default "
        f"settings: group commit every {settings.collector_flush_ms} ms or {DEFAULT_RECEIVE_MAXIMUM // 2} messages, "
        f"ReceiveMaximum {DEFAULT_RECEIVE_MAXIMUM}, windows of {settings.window_seconds:.0f} s.",
        "",
        "| scenario | messages | subscriber | messages/s (median) | range | publisher msgs/s | lost | duplicates |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    medians: dict[tuple[str, str], float] = {}
    for (scenario, subscriber), runs in groups.items():
        rates = sorted(run.rate for run in runs)
        medians[(scenario, subscriber.split()[0])] = statistics.median(rates)
        publisher_rates = [run.publisher_rate for run in runs if run.publisher_rate]
        publisher = f"{statistics.median(publisher_rates):,.0f}" if publisher_rates else "(queued before)"
        lines.append(
            f"| {scenario} | {runs[0].messages:,} | {subscriber} | {statistics.median(rates):,.0f} | "
            f"{rates[0]:,.0f}-{rates[-1]:,.0f} | "
            f"{publisher} | {sum(run.lost for run in runs)} | {sum(run.duplicates for run in runs)} |"
        )
    lines.append("")
    for scenario in ("live", "backlog"):
        bare, collector = medians.get((scenario, "bare")), medians.get((scenario, "collector"))
        if bare and collector:
            lines.append(
                f"- {scenario}: collector / bare = **{collector / bare:.2f}** "
                f"({collector:,.0f} vs {bare:,.0f} messages/s)"
            )
    lines += [
        "",
        "Rate: messages divided by the time from the first message received (live) or from connecting",
        "(backlog) to the last one counted (bare) or written durably (collector: part file fsynced, then",
        "acknowledged; its start-up recovery is included in backlog). live: a publisher process sends",
        "while the subscriber drains, so on 2 cores they compete for CPU and the broker queues what the",
        "subscriber has not taken yet; backlog: the messages wait in the subscriber's persistent session and",
        "are drained with no publisher running. Lost and duplicates: for the collector counted in its sealed",
        "windows (the zero-loss check), for the bare subscriber from its message count.",
        "",
    ]
    return "\n".join(lines)


def summary(results: list[Result]) -> dict[str, dict[str, float | int]]:
    """Per scenario: median rate of each subscriber, collector / bare, and the collector's loss over all rounds."""
    figures: dict[str, dict[str, float | int]] = {}
    for scenario in dict.fromkeys(result.scenario for result in results):
        runs = [result for result in results if result.scenario == scenario]
        bare = statistics.median(r.rate for r in runs if r.subscriber.startswith("bare"))
        collector_runs = [r for r in runs if r.subscriber.startswith("collector")]
        collector = statistics.median(r.rate for r in collector_runs)
        figures[scenario] = {
            "messages": runs[0].messages,
            "rounds": len(collector_runs),
            "bare_rate": round(bare, 1),
            "collector_rate": round(collector, 1),
            "ratio": round(collector / bare, 3),
            "collector_lost": sum(r.lost for r in collector_runs),
            "collector_duplicates": sum(r.duplicates for r in collector_runs),
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30_000, help="messages per live run")
    parser.add_argument(
        "--backlog-messages",
        type=int,
        default=30_000,
        help="messages queued per backlog run (as many as a live run: a short backlog times the collector's start-up)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--assets", type=int, default=20)
    parser.add_argument("--scenarios", default="live,backlog")
    parser.add_argument("--no-write", action="store_true", help="print the table, don't write results/ingest.md")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--role", default="bench", choices=["bench", "publisher"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "publisher":
        print(json.dumps(publish(args.url, args.messages, args.prefix, args.assets)))
        return 0

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    arguments = argv if argv is not None else sys.argv[1:]
    command = " ".join([".venv/bin/python benchmarks/ingest.py", shlex.join(arguments)]).strip()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as temp:
        temp_dir = Path(temp)
        prefer = "mosquitto" if shutil.which("mosquitto") else "embedded"
        with start_local_broker(free_port(), temp_dir / "broker", prefer=prefer) as broker:
            for round_number in range(args.rounds):
                tag = f"{int(time.time())}-{round_number}"
                for scenario in args.scenarios.split(","):
                    count = args.backlog_messages if scenario == "backlog" else args.messages
                    for name in ("bare", "collector"):
                        if name == "bare":
                            result = bench_bare(broker.url, count, args.assets, scenario, tag)
                        else:
                            result = bench_collector(broker.url, temp_dir, count, args.assets, scenario, tag)
                        print(
                            f"round {round_number + 1} {scenario:8} {name:10} {result.rate:10,.0f} msg/s  "
                            f"{result.seconds:6.2f} s  lost {result.lost}  duplicates {result.duplicates}",
                            flush=True,
                        )
                        results.append(result)
            text = report(results, command, broker.kind, load)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"wrote {RESULTS.relative_to(REPO_ROOT)}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"benchmark": "ingest", "scenarios": summary(results)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
