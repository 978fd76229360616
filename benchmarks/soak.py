"""Soak: the collector under a steady QoS 1 stream for N minutes; flat memory and no loss.

A Mosquitto of its own (free port, temp dir), the collector as `factory collect` runs it (its own
process, default settings), and a paced publisher process sending `--rate` messages a second (QoS 1,
robot telemetry of about 300 bytes, `--assets` assets, a bounded window of unacknowledged publishes).
The publisher records which messages the broker acknowledged. Every `--sample-seconds` the
collector's RSS is read (psutil). When the publisher is done and the collector has written what it
received, the collector is stopped as Ctrl-C would (it seals its open window) and every sealed window
is read back: each acknowledged message must be in exactly one of them.

Flat memory: RSS over the first and the last tenth of the run, and the slope of a least-squares
line through the second half (MB/hour). The collector's dedup index fills for its first
min(horizon, max entries / rate) seconds (10 minutes at 2,000 messages/s); the verdict is
"flat" when the second half starts after that and its slope is at most FLAT_MB_PER_HOUR.

    .venv/bin/python benchmarks/soak.py                       # 60 minutes at 2,000 messages/s, judged on the last 30
    .venv/bin/python benchmarks/soak.py --minutes 2 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psutil
from ingest import sample_payload
from platform_run import free_port

from factory_pipelines import mqtt
from factory_pipelines.broker import start_local_broker
from factory_pipelines.settings import load_settings
from factory_pipelines.windows import sealed_dir
from sensors.collector import DEFAULT_DEDUP_HORIZON_MINUTES, DEFAULT_DEDUP_MAX_ENTRIES

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "soak.md"
MB = 1024 * 1024
FLAT_MB_PER_HOUR = 10.0  # a leak of 1.4 bytes per message at 2,000 messages/s; 240 MB a day
IN_FLIGHT = 200  # unacknowledged publishes the publisher allows (paho fails past 65,535)
ASSET_PREFIX = "soak-"
DRAIN_TIMEOUT_S = 180.0


# ---- the paced publisher (a child process: it must not share the sampler's GIL) -----------------


def publish_paced(url: str, rate: float, seconds: float, assets: int, acked_path: Path) -> dict[str, Any]:
    """Send message i (asset i % assets, seq i // assets) at start + i / rate; record which were acknowledged.

    One thread drives paho's loop itself (as benchmarks/ingest.py does). Falling behind shows as lag:
    how many seconds the last message sent was late on its schedule, at worst.
    """
    total = int(rate * seconds)
    acknowledged = bytearray(total)
    index_of_mid: dict[int, int] = {}
    state = {"acked": 0, "refused": 0}

    def on_publish(_client: object, _userdata: object, mid: int, reason_code: Any, _properties: object) -> None:
        index = index_of_mid.pop(mid, None)
        if index is None:
            return
        if getattr(reason_code, "is_failure", False):
            state["refused"] += 1
            return
        acknowledged[index] = 1
        state["acked"] += 1

    client = mqtt.make_client(f"soak-publisher-{os.getpid()}")
    client.max_inflight_messages_set(IN_FLIGHT)
    client.on_publish = on_publish
    mqtt.connect(client, url)
    deadline = time.monotonic() + 10
    while not client.is_connected():
        if client.loop(0.05) != 0 or time.monotonic() > deadline:
            raise ConnectionError("the publisher could not connect")
    started = time.perf_counter()
    sent = 0
    worst_lag_s = 0.0
    per_10s: list[int] = []
    while sent < total:
        elapsed = time.perf_counter() - started
        due = min(total, int(elapsed * rate) + 1)
        while sent < due and sent - state["acked"] - state["refused"] < IN_FLIGHT:
            asset = sent % assets
            info = client.publish(
                f"factory/main/{ASSET_PREFIX}{asset}/telemetry",
                sample_payload(f"{ASSET_PREFIX}{asset}", sent // assets),
                qos=1,
            )
            index_of_mid[info.mid] = sent
            sent += 1
        worst_lag_s = max(worst_lag_s, (due - sent) / rate)
        bucket = int(elapsed // 10)
        while len(per_10s) <= bucket:
            per_10s.append(sent)
        per_10s[bucket] = sent
        if client.loop(0.002) != 0:
            raise ConnectionError("the publisher lost its connection")
    sending_s = time.perf_counter() - started
    flush_deadline = time.monotonic() + 60
    while index_of_mid and time.monotonic() < flush_deadline:
        client.loop(0.01)
    client.disconnect()
    acked_path.write_bytes(bytes(acknowledged))
    rates = (np.diff([0, *per_10s]) / 10)[:-1]  # messages/s in each whole 10 s bucket (the last is partial)
    return {
        "messages": total,
        "sent": sent,
        "acknowledged": state["acked"],
        "refused": state["refused"],
        "unacknowledged": len(index_of_mid),
        "sending_s": round(sending_s, 2),
        "achieved_rate": round(sent / sending_s, 1),
        "worst_lag_s": round(worst_lag_s, 3),
        "slowest_10s_rate": round(float(rates.min()), 1) if rates.size else None,
    }


# ---- the collector and what it wrote -----------------------------------------------------------


def rows_on_disk(windows_dir: Path) -> int:
    """Rows in sealed windows and in open window parts (the collector writes a part per group commit)."""
    sealed = sorted(sealed_dir(windows_dir).rglob("*.parquet"))
    parts = sorted((windows_dir / "open").rglob("*.arrow"))
    count = 0
    if sealed:
        count += int(pl.scan_parquet(sealed).select(pl.len()).collect().item())
    for part in parts:  # parts come and go while the collector seals: count what is still there
        try:
            count += int(pl.scan_ipc(part).select(pl.len()).collect().item())
        except (FileNotFoundError, OSError, pl.exceptions.ComputeError):
            continue
    return count


def check_sealed(windows_dir: Path, acknowledged: np.ndarray, assets: int) -> dict[str, int]:
    """Each acknowledged message in exactly one sealed window? Counts of lost, duplicated and extra."""
    files = sorted(sealed_dir(windows_dir).rglob("*.parquet"))
    frame = (
        pl.scan_parquet(files)
        .select("asset_id", "seq")
        .filter(pl.col("asset_id").str.starts_with(ASSET_PREFIX))
        .collect()
    )
    asset = frame["asset_id"].str.strip_prefix(ASSET_PREFIX).cast(pl.Int64).to_numpy()
    number = frame["seq"].to_numpy() * assets + asset
    counts = np.bincount(number, minlength=acknowledged.size)
    acked = acknowledged.astype(bool)
    in_range = counts[: acked.size]
    return {
        "rows_sealed": int(frame.height),
        "windows_sealed": len(files),
        "acknowledged_found_once": int(np.sum(acked & (in_range == 1))),
        "lost": int(np.sum(acked & (in_range == 0))),
        "duplicated": int(np.sum(in_range > 1)),
        "unacknowledged_but_kept": int(np.sum(~acked & (in_range > 0))),
        "unknown": int(np.sum(counts[acked.size :])),
    }


@dataclass
class MemoryTrend:
    first_tenth_mb: float
    last_tenth_mb: float
    peak_mb: float
    second_half_slope_mb_per_h: float
    warm_up_s: float
    verdict: str
    by_minute_mb: list[float]  # mean RSS of each minute: a sawtooth and a trend look alike in one slope

    @classmethod
    def of(cls, samples: list[tuple[float, int]], warm_up_s: float) -> MemoryTrend:
        times = np.array([t for t, _ in samples])
        mb = np.array([rss / MB for _, rss in samples])
        span = times[-1] - times[0]
        first = mb[times <= times[0] + span / 10] if span > 0 else mb
        last = mb[times >= times[-1] - span / 10] if span > 0 else mb
        half = times >= times[0] + span / 2
        slope = round(float(np.polyfit(times[half], mb[half], 1)[0] * 3600), 2) if half.sum() >= 3 else float("nan")
        if times[0] + span / 2 < warm_up_s:
            verdict = f"too short to judge: the second half starts before the dedup index is full (~{warm_up_s:.0f} s)"
        elif slope <= FLAT_MB_PER_HOUR:
            verdict = f"flat (slope {slope:+.1f} MB/h <= {FLAT_MB_PER_HOUR:g} MB/h)"
        else:
            verdict = f"GROWING (slope {slope:+.1f} MB/h > {FLAT_MB_PER_HOUR:g} MB/h)"
        minute = ((times - times[0]) // 60).astype(int)
        by_minute = [round(float(mb[minute == m].mean()), 1) for m in np.unique(minute)]
        return cls(
            round(float(statistics.fmean(first)), 1),
            round(float(statistics.fmean(last)), 1),
            round(float(mb.max()), 1),
            slope,  # rounded once, so the table and the verdict print the same figure
            warm_up_s,
            verdict,
            by_minute,
        )


def wait_for_drain(windows_dir: Path, expected_rows: int) -> float:
    """Seconds until the collector has written at least `expected_rows` (seen twice, a second apart, since
    a seal briefly shows rows both sealed and in parts), or DRAIN_TIMEOUT_S: the check then counts the loss."""
    started = time.monotonic()
    seen_enough = 0
    while seen_enough < 2 and time.monotonic() - started < DRAIN_TIMEOUT_S:
        seen_enough = seen_enough + 1 if rows_on_disk(windows_dir) >= expected_rows else 0
        time.sleep(1.0)  # polling period of the file count
    return time.monotonic() - started


def wait_for_line(path: Path, text: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in (path.read_text(errors="replace") if path.exists() else ""):
        if process.poll() is not None:
            raise RuntimeError(f"the collector exited with {process.returncode}; see {path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {text!r} in {path} within {timeout_s:.0f} s")
        time.sleep(0.1)


def soak(minutes: float, rate: float, assets: int, sample_s: float, keep: bool) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="soak-"))
    settings = load_settings(data_dir=data)
    prefer = "mosquitto" if shutil.which("mosquitto") else "embedded"
    broker = start_local_broker(free_port(), data / "broker", prefer=prefer)
    collector: subprocess.Popen[bytes] | None = None
    publisher: subprocess.Popen[str] | None = None
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_")}
        env |= {"FACTORY_DATA_DIR": str(data), "FACTORY_MQTT_URL": broker.url, "PYTHONUNBUFFERED": "1"}
        log_path = data / "collector.log"
        with log_path.open("wb") as log:
            collector = subprocess.Popen(
                [sys.executable, "-m", "factory_pipelines.cli", "collect"], env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for_line(log_path, "subscribed to", collector, 60)
        watched = psutil.Process(collector.pid)
        acked_path = data / "acknowledged.bin"
        publisher = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--role", "publisher", "--url", broker.url,
             "--rate", str(rate), "--minutes", str(minutes), "--assets", str(assets), "--acked-out", str(acked_path)],
            stdout=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        started = time.monotonic()
        samples: list[tuple[float, int]] = []
        next_sample = started
        next_report = started + 30
        while publisher.poll() is None:
            if collector.poll() is not None:
                raise RuntimeError(f"the collector exited with {collector.returncode}; see {log_path}")
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - started, watched.memory_info().rss))
                next_sample += sample_s
            if now >= next_report:
                next_report += 60
                print(f"  {now - started:6.0f} s: collector RSS {samples[-1][1] / MB:,.0f} MB", flush=True)
            time.sleep(0.2)  # the sampler's tick; the samples keep their own schedule
        out, _ = publisher.communicate()
        if publisher.returncode != 0:
            raise RuntimeError(f"the publisher failed with {publisher.returncode}")
        published = json.loads(out.strip().splitlines()[-1])
        acknowledged = np.frombuffer(acked_path.read_bytes(), dtype=np.uint8)

        drain_s = wait_for_drain(settings.windows_dir, int(acknowledged.sum()))
        os.killpg(collector.pid, signal.SIGINT)
        collector.wait(120)
        checked = check_sealed(settings.windows_dir, acknowledged, assets)
    finally:
        for process in (publisher, collector):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
        broker.stop()
        if not keep:
            shutil.rmtree(data, ignore_errors=True)
    horizon_s = max(DEFAULT_DEDUP_HORIZON_MINUTES * 60, 3 * settings.window_seconds)
    warm_up_s = min(horizon_s, DEFAULT_DEDUP_MAX_ENTRIES / rate)
    trend = MemoryTrend.of(samples, warm_up_s)
    return {
        "benchmark": "soak",
        "minutes": minutes,
        "target_rate": rate,
        "assets": assets,
        "broker": broker.kind,
        "window_seconds": settings.window_seconds,
        "window_max_rows": settings.window_max_rows,
        "publisher": published,
        "drain_s": round(drain_s, 1),
        "check": checked,
        "memory": trend.__dict__,
        "rss_samples": len(samples),
        "no_loss": checked["lost"] == 0 and checked["duplicated"] == 0,
        "flat": trend.verdict.startswith("flat"),
        "data_dir": str(data) if keep else None,
    }


def render(result: dict[str, Any], command: str, load: str, started: datetime) -> str:
    pub, check, memory = result["publisher"], result["check"], result["memory"]
    lines = [
        "# Soak: the collector under a steady QoS 1 stream",
        "",
        f"`{command}` started {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {result['broker']} on "
        f"loopback, load average {load} before the run: {result['minutes']:g} min at {result['target_rate']:,.0f} "
        f"messages/s over {result['assets']} assets (QoS 1, about 300 bytes each), the collector with default "
        f"settings (windows of {result['window_seconds']:g} s, sealed early at {result['window_max_rows']:,} rows).",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| messages sent / acknowledged by the broker | {pub['sent']:,} / {pub['acknowledged']:,} |",
        f"| achieved publish rate (slowest 10 s) | {pub['achieved_rate']:,.0f}/s ({pub['slowest_10s_rate']}/s) |",
        f"| worst lag of the publisher behind its schedule | {pub['worst_lag_s']} s |",
        f"| acknowledged messages found in exactly one sealed window | {check['acknowledged_found_once']:,} |",
        f"| lost / duplicated | **{check['lost']} / {check['duplicated']}** |",
        f"| sealed windows / rows | {check['windows_sealed']} / {check['rows_sealed']:,} |",
        f"| collector RSS, first tenth / last tenth / peak | {memory['first_tenth_mb']} / "
        f"{memory['last_tenth_mb']} / {memory['peak_mb']} MB |",
        f"| RSS slope over the second half | {memory['second_half_slope_mb_per_h']:+.1f} MB/h |",
        f"| memory verdict | {memory['verdict']} |",
        f"| time for the collector to write the broker's remainder after the publisher stopped | "
        f"{result['drain_s']} s |",
        "",
        f"Flat means a least-squares slope of at most {FLAT_MB_PER_HOUR:g} MB/hour over the second half of the run",
        "(at 2,000 messages/s that is a leak of under 1.4 bytes per message), judged only when the second half",
        f"starts after the collector's dedup index has filled (~{memory['warm_up_s']:.0f} s here: it keeps "
        f"{DEFAULT_DEDUP_MAX_ENTRIES:,} keys",
        f"or {DEFAULT_DEDUP_HORIZON_MINUTES:g} minutes' worth, and its RSS grows until then). No loss means every "
        "message the broker",
        "acknowledged to the publisher is in exactly one sealed window once the collector has stopped.",
        "",
        "Collector RSS by minute (MB, the mean of each minute's samples): "
        + ", ".join(f"{value:g}" for value in memory["by_minute_mb"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="messages per second")
    parser.add_argument("--assets", type=int, default=100)
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--keep", action="store_true", help="keep the data dir (windows, logs)")
    parser.add_argument("--no-write", action="store_true", help="print only; don't write results/soak.md")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--role", default="bench", choices=["bench", "publisher"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--acked-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "publisher":
        print(json.dumps(publish_paced(args.url, args.rate, args.minutes * 60, args.assets, args.acked_out)))
        return 0
    command = shlex.join([".venv/bin/python", "benchmarks/soak.py", *(argv if argv is not None else sys.argv[1:])])
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    started = datetime.now(UTC)
    print(f"soak: {args.minutes:g} min at {args.rate:,.0f} messages/s", flush=True)
    result = soak(args.minutes, args.rate, args.assets, args.sample_seconds, args.keep)
    text = render(result, command, load, started)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"wrote {RESULTS.relative_to(REPO)}")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
