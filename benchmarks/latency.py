"""Latency from telemetry publish to prediction visible at `GET /predictions/latest`.

Starts the real platform (`factory up`, fresh data dir, free ports, its own broker) once per
window length, waits until it serves its first predictions and the first versions of the other
models have finished training in the background (they take the CPU for minutes; `--during-training`
probes right away), then publishes a probe machine (`bench-probe`) twice a second next to the
simulated fleet and polls the REST API. A probe
message published at t lands in the window [start, end) that holds t; the first time the API
shows a prediction for that window at T, the message's latency is T - t.

Reported per window length: p50 / p95 / max latency, the same as a ratio to the window length
(the part a user chooses), and the platform's own share: from the window's end to the
prediction at REST (seal, sensor tick, Dagster run, store). A bare MQTT round trip on the same
broker in the same run is the baseline for the transport.

    .venv/bin/python benchmarks/latency.py                       # 60 s and 10 s windows
    .venv/bin/python benchmarks/latency.py --windows 10 --count 6 --no-write
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from platform_run import factory_up, free_port

from factory_pipelines.mqtt import BoundedPublisher, connect_and_wait, make_client
from factory_pipelines.telemetry import MachineTelemetry, dump_payload, first_seq, telemetry_topic

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "latency.md"
PROBE = "bench-probe"
TRAINING_TIMEOUT_S = 1200.0  # the first versions of every model train after start-up, taking the CPU


_free_port = free_port  # the name the other benchmarks import from here


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Result:
    window_s: float
    samples: int
    windows: int
    p50: float
    p95: float
    worst: float
    overhead_p50: float
    overhead_p95: float
    mqtt_rtt_ms: float
    after_first_trainings: bool  # False: measured while the other models' first versions were training


def _mqtt_round_trip_ms(url: str, count: int = 200) -> float:
    """Median publish → receive time of a QoS 1 message through the same broker."""
    received, subscribed = threading.Event(), threading.Event()
    client = make_client(f"bench-rtt-{os.getpid()}")
    client.on_message = lambda *_: received.set()
    client.on_subscribe = lambda *_: subscribed.set()
    connect_and_wait(client, url)
    client.loop_start()
    client.subscribe("bench/rtt", qos=1)
    if not subscribed.wait(10):
        raise RuntimeError("no SUBACK from the broker")
    times = []
    for _ in range(count):
        received.clear()
        started = time.perf_counter()
        client.publish("bench/rtt", b"x", qos=1)
        if received.wait(5):
            times.append((time.perf_counter() - started) * 1000)
    client.loop_stop()
    client.disconnect()
    return statistics.median(times)


def publish_probe(mqtt_url: str, asset: str, sent: list[datetime], stop: threading.Event) -> None:
    """Publish a steady machine `asset` twice a second (QoS 1) until `stop`; each send time goes in `sent`."""
    client = make_client(f"{asset}-{os.getpid()}")
    connect_and_wait(client, mqtt_url, timeout=60)
    client.loop_start()
    publisher = BoundedPublisher(client)
    seq = first_seq()
    while not stop.wait(0.5):
        now = datetime.now(UTC)
        row = MachineTelemetry(
            asset_id=asset, ts=now, seq=seq, Machine_ID=asset, Operation_Mode="Active",
            Temperature_C=60.0, Vibration_Hz=50.0, Power_Consumption_kW=8.0,
            Production_Speed_units_per_hr=300.0,
        )  # fmt: skip
        publisher.publish(telemetry_topic("main", asset), dump_payload(row), qos=1)
        sent.append(now)
        seq += 1
    publisher.flush(10)
    client.loop_stop()
    client.disconnect()


def measure(window_s: float, windows: int, during_training: bool) -> Result:
    with factory_up(window_s, prefix=f"latency-{int(window_s)}s-") as platform:
        platform.wait_for_predictions()
        trained = False
        if not during_training:
            print(f"[{window_s:g} s windows] first predictions; waiting for the first trainings to end", flush=True)
            trained = platform.wait_for_first_trainings(TRAINING_TIMEOUT_S)
        print(f"[{window_s:g} s windows] platform ready; probing {windows} windows", flush=True)
        api, mqtt_url = platform.api_url, platform.mqtt_url
        rtt = _mqtt_round_trip_ms(mqtt_url)

        sent: list[datetime] = []
        stop = threading.Event()

        thread = threading.Thread(target=publish_probe, args=(mqtt_url, PROBE, sent, stop), daemon=True)
        thread.start()
        seen: dict[str, tuple[datetime, datetime, datetime]] = {}  # key -> (start, end, first seen)
        probe_started = datetime.now(UTC)
        give_up = time.monotonic() + (windows + 3) * window_s + 300
        while len(seen) < windows + 1:
            if time.monotonic() > give_up:
                raise RuntimeError(
                    f"only {len(seen)} of {windows + 1} probed windows got a prediction in time: the platform fell "
                    f"behind its windows (see {platform.data_dir / 'logs' / 'dagster.log'})"
                )
            platform.check_alive()
            rows = httpx.get(f"{api}/predictions/latest", params={"asset_id": PROBE}, timeout=5).json()["items"]
            now = datetime.now(UTC)
            for row in rows:
                if row["window_key"] not in seen:
                    start = datetime.fromisoformat(row["window_start"])
                    seen[row["window_key"]] = (start, datetime.fromisoformat(row["window_end"]), now)
            time.sleep(0.25)
        stop.set()
        thread.join(30)

    # The first window holding probe messages started before the probe: it is only partly probed.
    complete = [(s, e, t) for s, e, t in seen.values() if s >= probe_started]
    latencies: list[float] = []
    overheads: list[float] = []
    for start, end, first_seen in complete:
        overheads.append((first_seen - end).total_seconds())
        latencies += [(first_seen - t).total_seconds() for t in sent if start <= t < end]
    return Result(
        window_s=window_s,
        samples=len(latencies),
        windows=len(complete),
        p50=_quantile(latencies, 0.5),
        p95=_quantile(latencies, 0.95),
        worst=max(latencies),
        overhead_p50=_quantile(overheads, 0.5),
        overhead_p95=_quantile(overheads, 0.95),
        mqtt_rtt_ms=rtt,
        after_first_trainings=trained,
    )


def render(results: list[Result], command: str) -> str:
    lines = [
        "# Latency: telemetry publish → prediction at `GET /predictions/latest`",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on this project's 2-core machine, with the default fleet",
        "(5 machines, 3 robots, a cleanroom at 1 msg/s each) plus a probe machine at 2 msg/s.",
        "",
        "| window | windows | probe msgs | p50 | p95 | max | p50 / window | p95 / window "
        "| window end → REST p50 | p95 | MQTT RTT (baseline) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    during = [f"{r.window_s:g} s" for r in results if not r.after_first_trainings]
    for r in results:
        lines.append(
            f"| {r.window_s:g} s | {r.windows} | {r.samples} | {r.p50:.1f} s | {r.p95:.1f} s | {r.worst:.1f} s "
            f"| {r.p50 / r.window_s:.2f} | {r.p95 / r.window_s:.2f} | {r.overhead_p50:.1f} s | {r.overhead_p95:.1f} s "
            f"| {r.mqtt_rtt_ms:.2f} ms |"
        )
    lines += [
        "",
        "A message waits on average half a window for its window to seal (p50 / window ≈ 0.5 plus the",
        "platform's share); 'window end → REST' is that share: the collector seals at the window's end,",
        "the sensor polls every 5 s, Dagster launches a run (a new process) that scores the window with",
        "the champion and writes the store. The MQTT round trip is the transport's floor on the same broker.",
        (
            f"Measured while the first versions of the other models were still training ({', '.join(during)}):"
            " they take the CPU for minutes after start-up, so these figures are higher than steady state."
            if during
            else "Probed once the first trainings after start-up were over (steady state)."
        ),
        "",
        f"Command: `{command}`",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=float, nargs="+", default=[60.0, 10.0], help="window lengths (s)")
    parser.add_argument("--count", type=int, default=10, help="fully probed windows per length")
    parser.add_argument(
        "--during-training", action="store_true", help="probe right after the first predictions, not steady state"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; don't update results/latency.md")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    results = [measure(w, args.count, args.during_training) for w in args.windows]
    text = render(results, "python benchmarks/latency.py " + " ".join(sys.argv[1:]))
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
    if args.json_out:
        figures = {"benchmark": "latency", "windows": [dataclasses.asdict(r) for r in results]}
        args.json_out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
