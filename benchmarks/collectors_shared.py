"""Collectors in parallel: 1, 2 and 4 `factory collect --shared` processes draining one QoS 1 backlog.

Each run gets a Mosquitto of its own (a stopped member's persistent session stays in the group and
keeps being routed a share, so runs must not meet), then:

1. starts N collectors as `factory collect --shared` processes (FACTORY_COLLECTOR_ID c1..cN, default
   settings: group commit every 50 ms or 500 messages, ReceiveMaximum 1000, 60 s windows) and waits
   until each has subscribed to `$share/collectors/...`;
2. pauses them (SIGSTOP: connected, subscribed, reading nothing), so their start-up and imports are
   not timed and no publisher competes for the two cores during the drain;
3. publishes `--messages` QoS 1 messages (about 300 bytes, `--assets` assets) from a publisher
   process (`ingest.py --role publisher`, as fast as the broker acknowledges); Mosquitto routes them
   round robin into the N sessions;
4. resumes them all at once (SIGCONT) and polls every 10 ms until the rows they made durable (part
   files and sealed windows) add up to the messages published: rate = messages / that time;
5. stops them as Ctrl-C would (they seal their windows) and reads every sealed window back: each
   acknowledged message must be in exactly one (lost and duplicated are reported next to the rate).

The baseline, measured the same way in the same round: N bare paho subscribers (QoS 1, auto-ack,
count and nothing else) in processes of their own on the same shared subscription, counting into a
small memory-mapped file that the same 10 ms poll reads. Each collector figure is reported as a ratio to one
bare subscriber (the ceiling of one Python consumer on this machine) and to N bare subscribers.
Each round runs bare 1, collectors 1, bare 2, collectors 2, bare 4, collectors 4 in turn; rates are
medians over rounds and ratios medians of the per-round ratios. The CPU seconds the members and the
broker used during each drain are reported per message (steadier than rates on a busy host). The
figures of the simulated fleet (`factory simulate` defaults: messages/s, bytes, sealed-window bytes
a day) are computed here too, for the capacity plan (`capacity.md`).

    .venv/bin/python benchmarks/collectors_shared.py        # about 10 min; writes results/collectors_shared.md
    .venv/bin/python benchmarks/collectors_shared.py --messages 6000 --rounds 1 --no-write
"""

from __future__ import annotations

import argparse
import io
import json
import mmap
import os
import platform
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import polars as pl
import psutil
from ingest import run_publisher, sample_payload
from platform_run import free_port

from factory_pipelines import mqtt
from factory_pipelines.broker import start_local_broker
from factory_pipelines.simulator import Fleet, FleetConfig
from factory_pipelines.telemetry import accept_telemetry
from factory_pipelines.windows import WINDOW_SCHEMA, parse_window_key, sealed_dir
from sensors.collector import DEFAULT_RECEIVE_MAXIMUM, SHARED_GROUP

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "collectors_shared.md"
START_TIMEOUT_S = 120.0  # four Python processes importing the platform at once on two shared cores
DRAIN_TIMEOUT_S = 300.0
POLL_S = 0.01
SHARED_TOPIC = f"$share/{SHARED_GROUP}/factory/#"
FLEET_SECONDS = 600  # simulated seconds of the default fleet stepped to count its messages


# ---- the bare baseline: one process per member, counting into a slot of a shared, mmapped file ----


def run_bare(url: str, client_id: str, counts_file: Path, slot: int) -> int:
    """A bare shared-subscription member: QoS 1, auto-ack, counts into slot `slot` (int64) of `counts_file`."""
    with counts_file.open("r+b") as handle, mmap.mmap(handle.fileno(), 0) as counts:
        count = 0

        def _on_message(*_args: object) -> None:
            nonlocal count
            count += 1
            struct.pack_into("q", counts, slot * 8, count)

        client = mqtt.make_client(client_id)
        client.on_connect = lambda c, *_: c.subscribe(SHARED_TOPIC, qos=1)
        client.on_subscribe = lambda *_: print("subscribed", flush=True)
        client.on_message = _on_message
        mqtt.connect(client, url, clean_start=False, session_expiry_s=600, receive_maximum=DEFAULT_RECEIVE_MAXIMUM)
        signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
        client.loop_forever()
    return 0


class BareCounts:
    """The bare members' counters: one int64 per member in a small file they all map."""

    def __init__(self, path: Path, members_n: int) -> None:
        self.path = path
        self.members_n = members_n
        path.write_bytes(bytes(8 * members_n))
        self._handle = path.open("r+b")
        self._map = mmap.mmap(self._handle.fileno(), 0)

    def shares(self) -> list[int]:
        return list(struct.unpack_from(f"{self.members_n}q", self._map))

    def total(self) -> int:
        return sum(self.shares())

    def close(self) -> None:
        self._map.close()
        self._handle.close()


# ---- members as processes ----


@dataclass
class Member:
    """One member of the shared subscription: a collector or a bare subscriber, in its own process."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not log {text!r} within {timeout:.0f} s:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def stop(self) -> int:
        """Ctrl-C's signal (resuming it first if paused); SIGKILL if it does not stop within a minute."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=30)
        self.log_file.close()
        return code


def spawn(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> Member:
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
    )
    return Member(name, process, log_path, log_file)


class DurableRows:
    """Rows the collectors made durable so far: part files and sealed windows, each file read once."""

    def __init__(self, windows_dir: Path) -> None:
        self.windows_dir = windows_dir
        self._rows: dict[Path, int] = {}

    def _count(self, path: Path) -> int | None:
        rows = self._rows.get(path)
        if rows is None:
            try:
                scan = pl.scan_parquet(path) if path.suffix == ".parquet" else pl.scan_ipc(path)
                rows = int(scan.select(pl.len()).collect().item())
            except FileNotFoundError:
                return None  # sealed meanwhile: counted from its sealed file on a later poll
            self._rows[path] = rows
        return rows

    def count(self) -> int:
        parts = list((self.windows_dir / "open").glob("*/part-*.arrow"))  # parts first, then sealed files
        sealed = list(sealed_dir(self.windows_dir).glob("*/*.parquet"))
        sealed_keys = {path.stem for path in sealed}
        counts = [self._count(path) for path in sealed]
        counts += [self._count(path) for path in parts if path.parent.name not in sealed_keys]
        return sum(count for count in counts if count is not None)


@dataclass
class Run:
    kind: str  # "collectors" or "bare"
    members: int
    messages: int
    seconds: float
    publisher_rate: float
    lost: int
    duplicates: int
    shares: list[int]  # rows per member
    member_cpu_s: float  # CPU seconds the members used during the drain (user + system)
    broker_cpu_s: float  # ... and the broker, delivering
    broker_publish_cpu_s: float  # CPU seconds the broker used while the backlog was published (receive, route)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def member_cpu_us_per_message(self) -> float:
        return self.member_cpu_s / self.messages * 1e6

    @property
    def broker_cpu_us_per_message(self) -> float:
        """The broker's CPU per message end to end: taking it from the publisher, routing, delivering."""
        return (self.broker_publish_cpu_s + self.broker_cpu_s) / self.messages * 1e6


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far."""
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def drain(
    members: list[Member], broker_pid: int, published: int, durable: Callable[[], int]
) -> tuple[float, float, float]:
    """Resume the paused members at once; (seconds until `durable()` reaches `published`, polled every 10 ms,
    CPU seconds of the members and of the broker meanwhile)."""
    pids = [member.process.pid for member in members]
    members_before, broker_before = cpu_seconds(pids), cpu_seconds([broker_pid])
    started = time.perf_counter()
    for member in members:
        member.signal(signal.SIGCONT)
    deadline = started + DRAIN_TIMEOUT_S
    while durable() < published:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"only {durable()} of {published} messages after {DRAIN_TIMEOUT_S:.0f} s")
        for member in members:
            if member.process.poll() is not None:
                raise RuntimeError(f"{member.name} exited with {member.process.returncode}:\n{member.log()[-3000:]}")
        time.sleep(POLL_S)
    seconds = time.perf_counter() - started
    return seconds, cpu_seconds(pids) - members_before, cpu_seconds([broker_pid]) - broker_before


def run_once(kind: str, count: int, members_n: int, assets: int, work: Path, tag: str) -> Run:
    """One configuration on a fresh broker: start, pause, publish, resume and time the drain, check, stop."""
    run_dir = work / f"{kind}-{members_n}-{tag}"
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True)
    prefix = f"{kind}{members_n}-{tag}"
    windows_dir = run_dir / "data" / "windows"
    bare_counts: BareCounts | None = None
    members: list[Member] = []
    with start_local_broker(free_port(), run_dir / "broker", prefer="mosquitto") as broker:
        try:
            if kind == "collectors":
                env = {name: value for name, value in os.environ.items() if not name.startswith("FACTORY_")}
                env |= {
                    "FACTORY_DATA_DIR": str(run_dir / "data"),
                    "FACTORY_MQTT_URL": broker.url,
                    "PYTHONUNBUFFERED": "1",
                    "TF_CPP_MIN_LOG_LEVEL": "2",
                }
                for number in range(1, members_n + 1):
                    argv = [sys.executable, "-m", "factory_pipelines.cli", "collect", "--shared"]
                    member_env = env | {"FACTORY_COLLECTOR_ID": f"c{number}"}
                    members.append(spawn(f"collector-c{number}", argv, member_env, log_dir))
                durable: Callable[[], int] = DurableRows(windows_dir).count
            else:
                bare_counts = BareCounts(run_dir / "counts.bin", members_n)
                durable = bare_counts.total
                for number in range(members_n):
                    argv = [sys.executable, str(Path(__file__).resolve()), "--role", "bare", "--url", broker.url]
                    argv += ["--counts-file", str(bare_counts.path), "--slot", str(number)]
                    argv += ["--client-id", f"bare-{number}"]
                    members.append(spawn(f"bare-{number}", argv, dict(os.environ), log_dir))
            for member in members:
                member.wait_for("subscribed", START_TIMEOUT_S)
            for member in members:
                member.signal(signal.SIGSTOP)
            assert broker.process is not None
            broker_before = cpu_seconds([broker.process.pid])
            publisher = run_publisher(broker.url, count, prefix, assets)
            broker_publish_cpu_s = cpu_seconds([broker.process.pid]) - broker_before
            if publisher["acknowledged"] != count:
                raise RuntimeError(f"the broker acknowledged {publisher['acknowledged']} of {count}")
            seconds, member_cpu_s, broker_cpu_s = drain(members, broker.process.pid, count, durable)
        finally:
            codes = {member.name: member.stop() for member in members}
        if bare_counts is not None:
            shares = bare_counts.shares()
            bare_counts.close()
            lost, duplicates = max(0, count - sum(shares)), max(0, sum(shares) - count)
        else:
            if any(codes.values()):
                raise RuntimeError(f"collectors exited with {codes}")
            lost, duplicates, shares = check_windows(windows_dir, count, prefix, assets, members_n)
    publisher_rate = publisher["acknowledged"] / publisher["seconds"]
    cpu = (member_cpu_s, broker_cpu_s, broker_publish_cpu_s)
    return Run(kind, members_n, count, seconds, publisher_rate, lost, duplicates, shares, *cpu)


def check_windows(
    windows_dir: Path, count: int, prefix: str, assets: int, members_n: int
) -> tuple[int, int, list[int]]:
    """(lost, duplicated, rows per collector) from the sealed windows: the zero-loss check."""
    frames = [
        pl.read_parquet(path, columns=["asset_id", "seq"]).with_columns(
            pl.lit(parse_window_key(path.stem)[1]).alias("collector")
        )
        for path in sealed_dir(windows_dir).glob("*/*.parquet")
    ]
    rows = pl.concat(frames)
    expected = {(f"{prefix}-{n % assets}", n // assets) for n in range(count)}
    got = set(rows.select("asset_id", "seq").iter_rows())
    per_collector = Counter(rows["collector"].to_list())
    shares = [per_collector.get(f"c{number}", 0) for number in range(1, members_n + 1)]
    return len(expected - got), rows.height - len(got) + len(got - expected), shares


# ---- the simulated fleet, for the capacity plan ----


def fleet_figures(seconds: int = FLEET_SECONDS) -> dict[str, Any]:
    """Messages/s, payload bytes/s and sealed-window bytes of `factory simulate`'s default fleet (simulated time).

    Each message goes through the collector's own parser (`accept_telemetry`) into WINDOW_SCHEMA rows,
    and each minute of them is written as a sealed window is (Parquet, zstd), so the bytes per day
    are what the sealed windows of that fleet take on disk or in object storage.
    """
    fleet = Fleet(FleetConfig(), seq_start=0)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    messages: Counter[str] = Counter()
    size: Counter[str] = Counter()
    windows: dict[int, list[dict[str, Any]]] = {}
    for second in range(seconds):
        now = start + timedelta(seconds=second)
        for topic, payload in fleet.step(now):
            raw = payload.model_dump_json().encode()
            kind = type(payload).__name__
            messages[kind] += 1
            size[kind] += len(raw)
            accepted = accept_telemetry(topic, raw, received_at=now)
            assert accepted is not None
            model = accepted.model
            row = {"asset_id": model.asset_id, "kind": str(model.kind), "site": "main", "topic": topic}
            row |= {"ts": model.ts, "received_at": now, "seq": model.seq, "payload": accepted.wire.decode()}
            windows.setdefault(second // 60, []).append(row)
    sealed_bytes = 0
    for rows in windows.values():
        frame = pl.DataFrame(rows).select([pl.col(name).cast(dtype) for name, dtype in WINDOW_SCHEMA.items()])
        buffer = io.BytesIO()
        frame.write_parquet(buffer, compression="zstd")  # as durable_files.write_parquet_atomic writes it
        sealed_bytes += buffer.tell()
    total = sum(messages.values())
    return {
        "assets": len(fleet.asset_ids),
        "messages_per_s": round(total / seconds, 3),
        "payload_bytes_per_s": round(sum(size.values()) / seconds, 1),
        "sealed_bytes_per_message": round(sealed_bytes / total, 1),
        "sealed_mb_per_day": round(sealed_bytes / seconds * 86400 / 1e6, 1),
        "kinds": {
            kind: {"messages_per_s": round(messages[kind] / seconds, 3), "bytes_per_message": round(size[kind] / n)}
            for kind, n in sorted(messages.items())
        },
    }


# ---- report ----


def summary(runs: list[Run], fleet: dict[str, Any]) -> dict[str, Any]:
    """Medians per configuration; ratios are medians of per-round ratios (a round's runs are minutes apart,
    so a busy spell of the host moves both sides of a ratio more than it moves the ratio)."""

    def of(kind: str, members_n: int) -> list[Run]:
        return [r for r in runs if r.kind == kind and r.members == members_n]

    def per_round_ratio(members_n: int, bare_n: int) -> float | None:
        collectors, bares = of("collectors", members_n), of("bare", bare_n)
        if not bares:
            return None
        return statistics.median(c.rate / b.rate for c, b in zip(collectors, bares, strict=False))

    members: dict[str, Any] = {}
    for members_n in sorted({r.members for r in runs if r.kind == "collectors"}):
        collector_runs, bare_runs = of("collectors", members_n), of("bare", members_n)
        to_same = per_round_ratio(members_n, members_n)
        members[str(members_n)] = {
            "messages": collector_runs[0].messages,
            "rounds": len(collector_runs),
            "rate": round(statistics.median(r.rate for r in collector_runs), 1),
            "range": [round(min(r.rate for r in collector_runs), 1), round(max(r.rate for r in collector_runs), 1)],
            "ratio_to_one_bare": round(per_round_ratio(members_n, 1) or 0.0, 3),
            "bare_same_members_rate": round(statistics.median(r.rate for r in bare_runs), 1) if bare_runs else None,
            "ratio_to_same_bare": round(to_same, 3) if to_same is not None else None,
            "cpu_us_per_message": round(statistics.median(r.member_cpu_us_per_message for r in collector_runs), 1),
            "broker_cpu_us_per_message": round(
                statistics.median(r.broker_cpu_us_per_message for r in collector_runs), 1
            ),
            "lost": sum(r.lost for r in collector_runs),
            "duplicates": sum(r.duplicates for r in collector_runs),
            "shares": collector_runs[-1].shares,
        }
    bare_one = of("bare", 1)
    bare_runs = [r for r in runs if r.kind == "bare"]
    return {
        "bare_one_rate": round(statistics.median(r.rate for r in bare_one), 1),
        "bare_one_cpu_us_per_message": round(statistics.median(r.member_cpu_us_per_message for r in bare_one), 1),
        "bare_lost": sum(r.lost for r in bare_runs),
        "bare_duplicates": sum(r.duplicates for r in bare_runs),
        "members": members,
        "fleet": fleet,
    }


def report(runs: list[Run], figures: dict[str, Any], command: str, load: str) -> str:
    rounds = max(r["rounds"] for r in figures["members"].values())
    lines = [
        "# Collectors in parallel on a shared subscription",
        "",
        f"Made by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {platform.machine()}, {os.cpu_count()} "
        f"CPUs, Python {platform.python_version()}, Mosquitto on loopback (a fresh one per run), load average "
        f"{load} before the run. A backlog of QoS 1 messages of about {len(sample_payload('bench-0', 0))} bytes "
        f"is routed by the broker into the sessions of N paused members, which are then resumed at once; rate = "
        f"messages / time until all of them are durable (collectors: part files or sealed windows) or counted "
        f"(bare). {rounds} rounds, each running bare 1, collectors 1, bare 2, collectors 2, ... in turn; rates are "
        f"medians, ratios the median of the per-round ratios. CPU: user + system seconds per message of the "
        f"members during the drain, and of the broker while the backlog was published and drained (take, route, "
        f"deliver).",
        "",
        "| members | messages | collectors msg/s (median) | range | / 1 bare | N bare msg/s | / N bare | "
        "CPU µs/msg (collectors) | CPU µs/msg (broker) | lost | duplicates | rows per collector (last round) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for members_n, f in figures["members"].items():
        bare_n = f"{f['bare_same_members_rate']:,.0f}" if f["bare_same_members_rate"] else "-"
        same = f"{f['ratio_to_same_bare']:.2f}" if f["ratio_to_same_bare"] is not None else "-"
        lines.append(
            f"| {members_n} | {f['messages']:,} | {f['rate']:,.0f} | {f['range'][0]:,.0f}-{f['range'][1]:,.0f} | "
            f"**{f['ratio_to_one_bare']:.2f}** | {bare_n} | {same} | {f['cpu_us_per_message']:.0f} | "
            f"{f['broker_cpu_us_per_message']:.0f} | {f['lost']} | {f['duplicates']} | "
            f"{', '.join(f'{share:,}' for share in f['shares'])} |"
        )
    lines += [
        "",
        f"One bare paho subscriber (the baseline of `/ 1 bare`): {figures['bare_one_rate']:,.0f} messages/s "
        f"(median), {figures['bare_one_cpu_us_per_message']:.0f} µs of CPU per message; bare runs lost "
        f"{figures['bare_lost']} and duplicated {figures['bare_duplicates']}.",
        "",
        "Every run, in the order they ran (rate in messages/s; publisher = the backlog's publishing rate):",
        "",
        "| round | kind | members | seconds | msg/s | CPU µs/msg (members) | CPU µs/msg (broker) | publisher msg/s "
        "| lost | duplicates |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    per_round = len({(r.kind, r.members) for r in runs})
    for index, run in enumerate(runs):
        lines.append(
            f"| {index // per_round + 1} | {run.kind} | {run.members} | {run.seconds:.2f} | {run.rate:,.0f} | "
            f"{run.member_cpu_us_per_message:.0f} | {run.broker_cpu_us_per_message:.0f} | {run.publisher_rate:,.0f} "
            f"| {run.lost} | {run.duplicates} |"
        )
    fleet = figures["fleet"]
    lines += [
        "",
        "## The simulated fleet (`factory simulate` / `factory up` defaults)",
        "",
        f"{fleet['assets']} assets, **{fleet['messages_per_s']:g} messages/s**, {fleet['payload_bytes_per_s']:,.0f} "
        f"bytes/s of JSON payload; sealed windows (Parquet, zstd, 60 s) take {fleet['sealed_bytes_per_message']:g} "
        f"bytes per message, **{fleet['sealed_mb_per_day']:g} MB a day**. Counted over {FLEET_SECONDS} simulated "
        "seconds of `Fleet(FleetConfig())`:",
        "",
        "| payload | messages/s | bytes per message |",
        "| --- | ---: | ---: |",
    ]
    lines += [
        f"| {kind} | {k['messages_per_s']:g} | {k['bytes_per_message']:,} |" for kind, k in fleet["kinds"].items()
    ]
    lines += ["", "What these figures mean at 10x and 100x the fleet: [`../capacity.md`](../capacity.md).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30_000, help="backlog per run")
    parser.add_argument("--members", default="1,2,4", help="collector counts to measure")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--assets", type=int, default=20)
    parser.add_argument("--no-write", action="store_true", help="print the report, don't write the results file")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--role", default="bench", choices=["bench", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--counts-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--slot", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--client-id", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "bare":
        return run_bare(args.url, args.client_id, args.counts_file, args.slot)
    if shutil.which("mosquitto") is None:
        parser.error("shared subscriptions need Mosquitto on PATH")

    shown = list(argv if argv is not None else sys.argv[1:])
    if "--json-out" in shown:  # run_all's private file: not part of the command that makes the figures
        index = shown.index("--json-out")
        del shown[index : index + 2]
    command = shlex.join([".venv/bin/python", "benchmarks/collectors_shared.py", *shown])
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    sizes = [int(n) for n in args.members.split(",")]
    plan = [(kind, n) for n in sorted({1, *sizes}) for kind in ("bare", "collectors") if kind == "bare" or n in sizes]
    fleet = fleet_figures()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="collectors-shared-") as temp:
        for round_number in range(1, args.rounds + 1):
            for kind, members_n in plan:
                run = run_once(kind, args.messages, members_n, args.assets, Path(temp), f"r{round_number}")
                runs.append(run)
                print(
                    f"round {round_number} {kind:10} x{members_n}: {run.rate:8,.0f} msg/s  {run.seconds:6.2f} s  "
                    f"CPU {run.member_cpu_us_per_message:4.0f} µs/msg (broker {run.broker_cpu_us_per_message:3.0f})  "
                    f"lost {run.lost}  duplicates {run.duplicates}  shares {run.shares}",
                    flush=True,
                )
    figures = summary(runs, fleet)
    text = report(runs, figures, command, load)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"wrote {RESULTS.relative_to(REPO_ROOT)}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"benchmark": "collectors_shared", **figures}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
