"""Every benchmark in sequence, then one summary: benchmarks/RESULTS.md.

Runs ingest, collectors_shared, scoring, latency (60 s windows), api_load, memory, soak, ws_fanout and
bridge_latency, each as its own process (so one that fails or hangs cannot take the others down),
with progress on the terminal. Each keeps writing its own results/*.md (not with --quick: a smoke
run leaves the recorded figures alone) and hands its figures to this script as JSON. RESULTS.md
holds one table (each figure, its baseline from the same run, the ratio, the target and whether it
is met), the absolute numbers, the machine, the commit, the date and the exact command; a benchmark
that failed is listed with its error.

    .venv/bin/python benchmarks/run_all.py                    # 88 min on a fast host (a 60 min soak)
    .venv/bin/python benchmarks/run_all.py --quick            # smoke check, 8-11 min
    .venv/bin/python benchmarks/run_all.py --only ingest,scoring
    .venv/bin/python -m benchmarks                            # the same as run_all.py

Ctrl-C or SIGTERM stops the running benchmark and every process it started (brokers, `factory up`,
load generators), keeps the summary of the benchmarks that finished, and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
SUMMARY = BENCHMARKS / "RESULTS.md"
COLLECTOR_TARGET = 0.8
SCORING_TARGET = 0.9
SOAK_TARGET_MINUTES = 30.0
SOAK_TARGET_RATE = 2000.0
BRIDGE_TARGET_MS = 1000.0


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    full_args: tuple[str, ...]
    quick_args: tuple[str, ...]
    timeout_s: float  # beyond this the run is stopped and reported as failed
    about: str  # what it measures, for the progress line


def benchmarks(soak_minutes: float) -> list[Benchmark]:
    soak = ("--minutes", f"{soak_minutes:g}")
    return [
        Benchmark("ingest", "ingest.py", (), ("--messages", "5000", "--backlog-messages", "3000", "--rounds", "1"),
                  900, "collector vs bare paho subscriber"),
        Benchmark("collectors_shared", "collectors_shared.py", (),
                  ("--messages", "6000", "--rounds", "1"), 1500, "1, 2 and 4 collectors on a shared subscription"),
        Benchmark("scoring", "scoring.py", (), ("--quick",), 1800, "prediction scoring vs bare model predict"),
        Benchmark("latency", "latency.py", ("--windows", "60", "--count", "5"),
                  ("--windows", "10", "--count", "2", "--during-training"), 2700,
                  "publish -> /predictions/latest through factory up"),
        Benchmark("api_load", "api_load.py", (), ("--rate", "200", "--seconds", "5"), 900, "REST p99 at fixed load"),
        Benchmark("memory", "memory.py", ("--minutes", "5"), ("--minutes", "1"), 1800,
                  "peak RSS per process of factory up"),
        Benchmark("soak", "soak.py", soak, (*soak, "--sample-seconds", "2"), soak_minutes * 60 + 900,
                  "collector at 2,000 msg/s: memory and loss"),
        Benchmark("ws_fanout", "ws_fanout.py", (), ("--clients", "20", "--messages", "50", "--rate", "10"), 900,
                  "WebSocket fan-out vs paho subscriber"),
        Benchmark("bridge_latency", "bridge_latency.py", (), ("--probes", "20"), 900,
                  "OPC UA / Modbus latency vs paho subscriber"),
    ]  # fmt: skip


@dataclass
class Outcome:
    name: str
    command: str
    seconds: float
    figures: dict[str, Any] | None = None
    error: str | None = None
    log: Path | None = None


def run_one(bench: Benchmark, quick: bool, work: Path) -> Outcome:
    """Run one benchmark script; its stdout goes to the terminal (prefixed) and to its log."""
    json_out = work / f"{bench.name}.json"
    log_path = work / f"{bench.name}.log"
    bench_args = [*(bench.quick_args if quick else bench.full_args), *(("--no-write",) if quick else ())]
    command = [sys.executable, str(BENCHMARKS / bench.script), *bench_args, "--json-out", str(json_out)]
    shown = shlex.join([".venv/bin/python", f"benchmarks/{bench.script}", *bench_args])
    started = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=BENCHMARKS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        timer = threading.Timer(bench.timeout_s, _stop_tree, args=(process,))
        timer.start()
        assert process.stdout is not None
        reporting = False  # once the script prints its report (Markdown or JSON), the log has it
        try:
            for line in process.stdout:
                log.write(line)
                reporting = reporting or line.startswith(("# ", "{"))
                if not reporting and _worth_showing(line):
                    print(f"  [{bench.name}] {line.rstrip()[:160]}", flush=True)
            process.wait()
        except KeyboardInterrupt:
            # The child runs in its own session, so the terminal's Ctrl-C never reached it or what it started.
            print(f"  [{bench.name}] interrupted: stopping it and every process it started", flush=True)
            _stop_tree(process)
            raise
        finally:
            timer.cancel()
    seconds = time.monotonic() - started
    outcome = Outcome(bench.name, shown, seconds, log=log_path)
    if process.returncode != 0:
        outcome.error = f"exit code {process.returncode}" + (
            f" (stopped after {bench.timeout_s:.0f} s)" if seconds >= bench.timeout_s else ""
        )
        outcome.error += ":\n" + _tail(log_path)
    elif not json_out.exists():
        outcome.error = "finished without writing its figures:\n" + _tail(log_path)
    else:
        outcome.figures = json.loads(json_out.read_text())
    return outcome


def _worth_showing(line: str) -> bool:
    """Progress lines, not library noise (TensorFlow, MLflow and Dagster log a lot to stderr)."""
    noise = ("I0000", "WARNING", "INFO mlflow", "Warning", "warnings.warn", "return fn(", "oneDNN", "absl")
    return bool(line.strip()) and not any(word in line for word in noise)


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _stop_tree(process: subprocess.Popen[str]) -> None:
    """End a benchmark (overrun or interrupted) and every process it started (by pid, children first)."""
    try:
        parent = psutil.Process(process.pid)
        tree = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for member in tree:
        try:
            member.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(tree, timeout=20)
    for member in alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            continue


# ---- the summary table ------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    value: str
    baseline: str
    ratio: str
    target: str
    met: str


def _yes(condition: bool) -> str:
    return "met" if condition else "**not met**"


def rows_ingest(f: dict[str, Any]) -> list[Row]:
    rows = []
    for scenario, s in f["scenarios"].items():
        no_loss = s["collector_lost"] == 0 and s["collector_duplicates"] == 0
        rows.append(
            Row(
                f"collector throughput, {scenario} ({s['messages']:,} msgs)",
                f"{s['collector_rate']:,.0f} msg/s, lost {s['collector_lost']}, duplicates {s['collector_duplicates']}",
                f"bare paho subscriber {s['bare_rate']:,.0f} msg/s",
                f"{s['ratio']:.2f}",
                f">= {COLLECTOR_TARGET} with zero loss",
                _yes(s["ratio"] >= COLLECTOR_TARGET and no_loss),
            )
        )
    return rows


def rows_collectors_shared(f: dict[str, Any]) -> list[Row]:
    rows = []
    for members, s in f["members"].items():
        same = f", {s['ratio_to_same_bare']:.2f} of {members} bare" if s["ratio_to_same_bare"] is not None else ""
        rows.append(
            Row(
                f"{members} collector(s) on a shared subscription, backlog ({s['messages']:,} msgs)",
                f"{s['rate']:,.0f} msg/s, lost {s['lost']}, duplicates {s['duplicates']}",
                f"1 bare paho subscriber {f['bare_one_rate']:,.0f} msg/s",
                f"{s['ratio_to_one_bare']:.2f}{same}",
                "reported, zero loss",
                _yes(s["lost"] == 0 and s["duplicates"] == 0),
            )
        )
    return rows


def rows_scoring(f: dict[str, Any]) -> list[Row]:
    return [
        Row(
            f"scoring {name} ({s['rows']} rows)",
            f"{s['platform_rows_per_s']:,.0f} rows/s",
            f"bare model {s['bare_rows_per_s']:,.0f} rows/s",
            f"{s['ratio']:.2f} (CPU time {s['cpu_time_ratio']:.2f})",
            f">= {SCORING_TARGET}",
            _yes(s["ratio"] >= SCORING_TARGET),
        )
        for name, s in f["families"].items()
    ]


def rows_latency(f: dict[str, Any]) -> list[Row]:
    return [
        Row(
            f"publish -> /predictions/latest, {w['window_s']:g} s windows ({w['samples']} probes"
            + ("" if w["after_first_trainings"] else ", during the first trainings")
            + ")",
            f"p50 {w['p50']:.1f} s, p95 {w['p95']:.1f} s",
            f"window length {w['window_s']:g} s; MQTT round trip {w['mqtt_rtt_ms']:.2f} ms",
            f"p50/window {w['p50'] / w['window_s']:.2f}, p95/window {w['p95'] / w['window_s']:.2f}",
            "reported (no target)",
            "-",
        )
        for w in f["windows"]
    ]


def rows_api(f: dict[str, Any]) -> list[Row]:
    rows = []
    for route in ("/predictions/latest", "/api/robots"):
        r = f[route]
        ours, base = r["platform"], r["baseline"]
        rows.append(
            Row(
                f"REST `GET {route}` p99 at {f['rate']:g} req/s",
                f"{ours['p99_ms']:.1f} ms ({ours['achieved_rps']:.0f} req/s, {ours['errors']} errors)",
                f"bare Starlette, same bytes: {base['p99_ms']:.1f} ms",
                f"{r['p99_ratio']:.1f}",
                f"p99 < {f['target_p99_ms']:g} ms",
                _yes(ours["p99_ms"] < f["target_p99_ms"] and ours["errors"] == 0),
            )
        )
    return rows


def rows_memory(f: dict[str, Any]) -> list[Row]:
    roles = f["roles"]
    expected = ("collector", "API", "SCADA bridge", "simulator", "MLflow server", "Dagster daemon", "broker")
    missing = [role for role in expected if role not in roles]
    return [
        Row(
            f"peak RSS of each process, factory up + {f['minutes_after_ready']:g} min",
            f"{len(roles)} roles; whole tree peak {f['peak_total_mb']:,.0f} MB, final {f['final_total_mb']:,.0f} MB",
            "-",
            "-",
            "each process's peak recorded",
            _yes(not missing) + (f" (missing: {', '.join(missing)})" if missing else ""),
        )
    ]


def rows_soak(f: dict[str, Any]) -> list[Row]:
    memory, check, pub = f["memory"], f["check"], f["publisher"]
    full_length = f["minutes"] >= SOAK_TARGET_MINUTES and f["target_rate"] >= SOAK_TARGET_RATE
    verdict = _yes(f["flat"] and f["no_loss"] and pub["achieved_rate"] >= 0.98 * f["target_rate"])
    return [
        Row(
            f"soak: collector, {f['minutes']:g} min at {f['target_rate']:,.0f} msg/s QoS 1",
            f"lost {check['lost']}, duplicated {check['duplicated']} of {pub['acknowledged']:,} acknowledged; "
            f"RSS slope {memory['second_half_slope_mb_per_h']:+.1f} MB/h; publisher {pub['achieved_rate']:,.0f}/s",
            f"collector RSS over the first tenth: {memory['first_tenth_mb']:.0f} MB",
            f"last tenth / first tenth {memory['last_tenth_mb'] / memory['first_tenth_mb']:.2f}",
            f"{SOAK_TARGET_MINUTES:g} min at {SOAK_TARGET_RATE:,.0f} msg/s, flat memory, no loss",
            verdict if full_length else f"not judged: {f['minutes']:g} min run ({memory['verdict']})",
        )
    ]


def rows_ws(f: dict[str, Any]) -> list[Row]:
    ws, base = f["ws_event_delay"], f["baseline_paho_delay"]
    return [
        Row(
            f"WebSocket fan-out, {f['clients']} clients",
            f"p95 {ws['p95_ms']} ms, missing {ws['missing']}",
            f"paho subscriber p95 {base['p95_ms']} ms",
            f"{f['ratio_p95']}",
            "reported (no target)",
            "-",
        )
    ]


def rows_bridge(f: dict[str, Any]) -> list[Row]:
    base = f["baseline_mqtt_subscriber"]
    rows = []
    for name, label in (("opcua_subscription", "OPC UA"), ("modbus_read", "Modbus")):
        ours = f[name]
        ratio = ours["p95_ms"] / base["p95_ms"] if ours.get("p95_ms") and base.get("p95_ms") else None
        rows.append(
            Row(
                f"SCADA bridge, MQTT -> {label} p95",
                f"{ours.get('p95_ms', '-')} ms, lost {ours['lost']}",
                f"paho subscriber p95 {base.get('p95_ms', '-')} ms",
                f"{ratio:.1f}" if ratio else "-",
                f"< {BRIDGE_TARGET_MS:g} ms",
                _yes(bool(ours.get("p95_ms")) and ours["p95_ms"] < BRIDGE_TARGET_MS and ours["lost"] == 0),
            )
        )
    return rows


ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "ingest": rows_ingest,
    "collectors_shared": rows_collectors_shared,
    "scoring": rows_scoring,
    "latency": rows_latency,
    "api_load": rows_api,
    "memory": rows_memory,
    "soak": rows_soak,
    "ws_fanout": rows_ws,
    "bridge_latency": rows_bridge,
}


def absolute_numbers(outcome: Outcome) -> list[str]:
    """The benchmark's own figures in a few lines (its results/*.md has everything)."""
    f = outcome.figures or {}
    if outcome.name == "memory":
        lines = [
            "| role | processes | peak RSS MB | largest process MB | final RSS MB |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for role, r in f["roles"].items():
            lines.append(
                f"| {role} | {r['processes']} | {r['peak_mb']:,.0f} | {r['peak_single_process_mb']:,.0f} "
                f"| {r['final_mb']:,.0f} |"
            )
        return lines
    if outcome.name == "scoring":
        return [
            f"- {name}: {s['platform_ms_per_window']:.2f} ms per window on the platform path, "
            f"{s['bare_ms_per_window']:.2f} ms bare ({s['windows']} windows, {s['rows']} rows)"
            for name, s in f["families"].items()
        ]
    if outcome.name == "ingest":
        return [
            f"- {scenario}: collector {s['collector_rate']:,.0f} msg/s, bare {s['bare_rate']:,.0f} msg/s "
            f"(median of {s['rounds']} rounds of {s['messages']:,} messages)"
            for scenario, s in f["scenarios"].items()
        ]
    if outcome.name == "collectors_shared":
        fleet = f["fleet"]
        return [
            f"- {members} collector(s): {s['rate']:,.0f} msg/s (range {s['range'][0]:,.0f}-{s['range'][1]:,.0f}), "
            f"{s['cpu_us_per_message']:.0f} µs CPU per message; rows per collector {s['shares']}"
            for members, s in f["members"].items()
        ] + [
            f"- 1 bare paho subscriber: {f['bare_one_rate']:,.0f} msg/s, {f['bare_one_cpu_us_per_message']:.0f} µs "
            f"CPU per message; simulated fleet: {fleet['messages_per_s']:g} msg/s from {fleet['assets']} assets"
        ]
    if outcome.name == "latency":
        return [
            f"- {w['window_s']:g} s windows: p50 {w['p50']:.1f} s, p95 {w['p95']:.1f} s, max {w['worst']:.1f} s; "
            f"window end -> REST p50 {w['overhead_p50']:.1f} s, p95 {w['overhead_p95']:.1f} s "
            f"({w['windows']} windows)"
            for w in f["windows"]
        ]
    if outcome.name == "api_load":
        lines = []
        for route in ("/predictions/latest", "/api/robots"):
            ours, base = f[route]["platform"], f[route]["baseline"]
            lines.append(
                f"- `GET {route}`: p50 {ours['p50_ms']:.1f} ms, p99 {ours['p99_ms']:.1f} ms, max {ours['max_ms']:.1f} "
                f"ms at {ours['achieved_rps']:.0f} req/s; baseline p50 {base['p50_ms']:.1f} ms, p99 "
                f"{base['p99_ms']:.1f} ms"
            )
        return lines
    if outcome.name == "soak":
        memory, pub = f["memory"], f["publisher"]
        return [
            f"- collector RSS: first tenth {memory['first_tenth_mb']} MB, last tenth {memory['last_tenth_mb']} MB, "
            f"peak {memory['peak_mb']} MB; {memory['verdict']}",
            f"- publisher: {pub['sent']:,} sent at {pub['achieved_rate']:,.0f}/s (slowest 10 s: "
            f"{pub['slowest_10s_rate']}/s, worst lag {pub['worst_lag_s']} s); {f['check']['windows_sealed']} windows "
            f"sealed; the collector wrote the broker's remainder in {f['drain_s']} s",
        ]
    if outcome.name == "ws_fanout":
        ws, base = f["ws_event_delay"], f["baseline_paho_delay"]
        return [
            f"- WebSocket: p50 {ws['p50_ms']} ms, p95 {ws['p95_ms']} ms, max {ws['max_ms']} ms over "
            f"{ws['samples']:,} deliveries; paho: p50 {base['p50_ms']} ms, p95 {base['p95_ms']} ms"
        ]
    if outcome.name == "bridge_latency":
        return [
            f"- {label}: p50 {f[key].get('p50_ms', '-')} ms, p95 {f[key].get('p95_ms', '-')} ms, "
            f"max {f[key].get('max_ms', '-')} ms, lost {f[key]['lost']}"
            for key, label in (
                ("baseline_mqtt_subscriber", "paho subscriber"),
                ("opcua_subscription", "OPC UA"),
                ("modbus_read", "Modbus"),
            )
        ]
    return []


def machine() -> dict[str, str]:
    cpu = "unknown"
    with Path("/proc/cpuinfo").open() as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{psutil.virtual_memory().total / 1024**3:.1f} GB",
        "python": platform.python_version(),
        "os": platform.platform(),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
    }


def render(
    outcomes: list[Outcome], command: str, quick: bool, started: datetime, load: str, host: dict[str, str]
) -> str:
    rows: list[Row] = []
    for outcome in outcomes:
        if outcome.figures is not None:
            try:
                rows += ROWS[outcome.name](outcome.figures)
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
                outcome.error = f"its figures could not be read: {exc!r}"
        if outcome.error is not None:
            rows.append(Row(outcome.name, "FAILED (see below)", "-", "-", "-", "**failed**"))
    lines = [
        "# Benchmark results",
        "",
        (
            "**Quick smoke run**: small sizes, to check the harness works; the figures are not the platform's. "
            "Run without `--quick` for figures of record.\n\n"
            if quick
            else ""
        )
        + f"Command: `{command}`; started {started:%Y-%m-%d %H:%M} UTC, took "
        f"{sum(o.seconds for o in outcomes) / 60:.1f} min. Machine: {host['cores']} cores ({host['cpu']}), "
        f"{host['memory']}, Python {host['python']}, {host['os']}; load average {load} at the start. "
        f"Commit {host['commit']}.",
        "",
        "Every ratio is against a baseline measured in the same run on the same machine.",
        "",
        "| figure | value | baseline (same run) | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {r.figure} | {r.value} | {r.baseline} | {r.ratio} | {r.target} | {r.met} |" for r in rows]
    lines += ["", "## Absolute numbers", ""]
    for outcome in outcomes:
        status = "failed" if outcome.error else f"{outcome.seconds / 60:.1f} min"
        lines += [f"### {outcome.name} ({status})", "", f"`{outcome.command}`", ""]
        if outcome.figures is not None and outcome.error is None:
            lines += absolute_numbers(outcome)
            if not quick:
                lines.append(f"\nDetails: [results/{outcome.name}.md](results/{outcome.name}.md)")
        if outcome.error:
            lines += ["```", outcome.error, "```"]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes: a smoke check")
    parser.add_argument("--soak-minutes", type=float, help="soak length (default 60, with --quick 1)")
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--out", type=Path, default=SUMMARY, help="where to write the summary")
    args = parser.parse_args(argv)
    soak_minutes = args.soak_minutes if args.soak_minutes is not None else (1.0 if args.quick else 60.0)
    chosen = benchmarks(soak_minutes)
    if args.only:
        names = {name.strip() for name in args.only.split(",")}
        unknown = names - {b.name for b in chosen}
        if unknown:
            parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
        chosen = [b for b in chosen if b.name in names]
    command = shlex.join([".venv/bin/python", "benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])])
    started = datetime.now(UTC)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    host = machine()  # the commit measured, taken before the run writes its results (or anyone commits)
    work = Path(tempfile.mkdtemp(prefix="run-all-"))
    print(f"running {len(chosen)} benchmarks{' (quick)' if args.quick else ''}; logs in {work}", flush=True)
    outcomes: list[Outcome] = []
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job starts with it ignored
        signal.signal(signum, _interrupt)
    for number, bench in enumerate(chosen, 1):
        print(f"[{number}/{len(chosen)}] {bench.name}: {bench.about}", flush=True)
        try:
            outcome = run_one(bench, args.quick, work)
        except KeyboardInterrupt:
            kept = f"{args.out} holds the {len(outcomes)} that finished" if outcomes else f"{args.out} left as it was"
            print(f"[{number}/{len(chosen)}] {bench.name}: interrupted; {kept}", flush=True)
            return 130
        outcomes.append(outcome)
        state = "FAILED" if outcome.error else "done"
        print(f"[{number}/{len(chosen)}] {bench.name}: {state} in {outcome.seconds:.0f} s", flush=True)
        # partial results survive a crash
        args.out.write_text(render(outcomes, command, args.quick, started, load, host))
    text = render(outcomes, command, args.quick, started, load, host)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}")
    return 1 if any(outcome.error for outcome in outcomes) else 0


def _interrupt(_signum: int, _frame: object) -> None:
    """SIGINT and SIGTERM as Ctrl-C, so the running benchmark's processes are stopped rather than orphaned."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
