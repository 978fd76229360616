"""Peak and final memory (RSS) of every process of the running platform, grouped by role.

Starts the platform as a user does (`factory up` with a fresh data dir, free ports and its own
Mosquitto, the simulated fleet of `--machines`/`--robots` plus the simulator's default cleanroom,
safety stations and camera), waits for its first predictions, lets it run `--minutes` more, and
samples every process under the launcher once a second (psutil). A process takes its role from its
command line (collector, API, bridge, simulator, MLflow, Dagster webserver / daemon / code server /
run workers, first trainings, broker, the launcher itself); one it does not recognise (a worker a
server forked) takes its parent's role.

Per role: peak RSS (the largest sum over the role's processes at one sample), the largest single
process, RSS at the last sample, and how many processes held the role over the run. RSS counts pages
shared between processes once per process, so the column sums overstate the machine's total.

    .venv/bin/python benchmarks/memory.py                    # 5 minutes after first predictions
    .venv/bin/python benchmarks/memory.py --minutes 1 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
from platform_run import factory_up

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "memory.md"
MB = 1024 * 1024

# (role, words its command line holds); the first match wins. Words are whole arguments (programs by
# their base name), so `-m factory_pipelines.cli up` is the launcher and `dagster api grpc` a code server.
ROLE_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("launcher (factory up)", ("factory_pipelines.cli", "up")),
    ("collector", ("factory_pipelines.cli", "collect")),
    ("API", ("factory_pipelines.cli", "serve")),
    ("SCADA bridge", ("factory_pipelines.cli", "bridge")),
    ("simulator", ("factory_pipelines.cli", "simulate")),
    ("first trainings", ("factory_pipelines.cli", "train")),
    ("broker", ("mosquitto",)),
    ("broker", ("amqtt",)),
    ("MLflow server", ("mlflow", "server")),
    ("Dagster run workers", ("execute_run",)),
    ("Dagster run workers", ("execute_step",)),
    ("Dagster code server", ("api", "grpc")),
    ("Dagster code server", ("code-server",)),
    ("Dagster webserver", ("dagster-webserver",)),
    ("Dagster webserver", ("dagster_webserver",)),
    ("Dagster daemon", ("dagster-daemon",)),
    ("Dagster daemon", ("dagster._daemon",)),
    ("dagster dev (supervisor)", ("dagster", "dev")),
)
ROLE_ORDER = list(dict.fromkeys(role for role, _ in ROLE_PATTERNS))


def role_from_cmdline(cmdline: list[str], parent_role: str | None = None) -> str | None:
    """The role a command line names; else, for a process a server forked or spawned, its parent's role.

    The Dagster code server starts each run in a `multiprocessing` spawn child: that is a run worker
    (and the processes of its steps inherit the role from it).
    """
    words = {os.path.basename(part) for part in cmdline[:1]} | set(cmdline[1:])
    for role, needles in ROLE_PATTERNS:
        if all(needle in words for needle in needles):
            return role
    if parent_role == "Dagster code server" and any("spawn_main" in part for part in cmdline):
        return "Dagster run workers"
    return parent_role


@dataclass
class RoleMemory:
    """What the samples saw of one role."""

    peak_bytes: int = 0
    peak_at_s: float = 0.0  # seconds after the launch
    peak_single_bytes: int = 0
    final_bytes: int = 0
    pids: set[int] = field(default_factory=set)
    commands: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, object]:
        return {
            "peak_mb": round(self.peak_bytes / MB, 1),
            "peak_at_s": round(self.peak_at_s),
            "peak_single_process_mb": round(self.peak_single_bytes / MB, 1),
            "final_mb": round(self.final_bytes / MB, 1),
            "processes": len(self.pids),
        }


@dataclass
class TreeSampler:
    """Samples the RSS of a process and everything under it, keeping the roles of pids it has seen."""

    root_pid: int
    roles: dict[str, RoleMemory] = field(default_factory=dict)
    role_of_pid: dict[tuple[int, float], str] = field(default_factory=dict)  # (pid, create time) -> role
    samples: int = 0
    peak_total_bytes: int = 0
    final_total_bytes: int = 0

    def _role(self, process: psutil.Process, tree: dict[int, psutil.Process]) -> str:
        """The role of `process`, from its command line or its parent's (see role_from_cmdline)."""
        key = (process.pid, process.create_time())
        if key not in self.role_of_pid:
            parent = tree.get(process.ppid())
            parent_role = self._role(parent, tree) if parent is not None else None
            cmdline = process.cmdline()
            self.role_of_pid[key] = role_from_cmdline(cmdline, parent_role) or f"other: {' '.join(cmdline[:3])[:60]}"
        return self.role_of_pid[key]

    def sample(self, elapsed_s: float) -> None:
        try:
            root = psutil.Process(self.root_pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        tree = {process.pid: process for process in processes}
        by_role: dict[str, int] = {}
        for process in processes:
            try:
                with process.oneshot():
                    rss = process.memory_info().rss
                    role = self._role(process, tree)
                    command = " ".join(process.cmdline())[:200]
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue  # it ended between the listing and the reading
            memory = self.roles.setdefault(role, RoleMemory())
            memory.pids.add(process.pid)
            memory.commands.add(command)
            memory.peak_single_bytes = max(memory.peak_single_bytes, rss)
            by_role[role] = by_role.get(role, 0) + rss
        for role, memory in self.roles.items():
            total = by_role.get(role, 0)
            if total > memory.peak_bytes:
                memory.peak_bytes, memory.peak_at_s = total, elapsed_s
            memory.final_bytes = total
        total = sum(by_role.values())
        self.peak_total_bytes = max(self.peak_total_bytes, total)
        self.final_total_bytes = total
        self.samples += 1


def run(
    minutes: float, up_args: list[str], window_seconds: float | None, interval_s: float, extra_env: dict[str, str]
) -> dict[str, object]:
    with factory_up(window_seconds, up_args, prefix="memory-bench-", extra_env=extra_env) as platform:
        sampler = TreeSampler(platform.process.pid)
        ready_after: float | None = None
        steady_until: float | None = None
        next_sample = time.monotonic()
        last_report = 0.0
        while True:
            now = time.monotonic()
            elapsed = now - platform.started_at
            sampler.sample(elapsed)
            platform.check_alive()
            if ready_after is None and platform.has_predictions():
                ready_after = elapsed
                steady_until = now + minutes * 60
                print(f"first predictions after {elapsed:.0f} s; sampling {minutes:g} min more", flush=True)
            if ready_after is None and elapsed > 900:
                raise RuntimeError(f"no predictions within 15 minutes; see {platform.log_path}")
            if steady_until is not None and now >= steady_until:
                break
            if elapsed - last_report >= 30:
                last_report = elapsed
                print(f"  {elapsed:5.0f} s: {sampler.final_total_bytes / MB:,.0f} MB over the tree", flush=True)
            next_sample += interval_s
            time.sleep(max(0.0, next_sample - time.monotonic()))  # the sampling period, not a wait on state
    return {
        "benchmark": "memory",
        "minutes_after_ready": minutes,
        "ready_after_s": round(ready_after or 0.0, 1),
        "samples": sampler.samples,
        "interval_s": interval_s,
        "peak_total_mb": round(sampler.peak_total_bytes / MB, 1),
        "final_total_mb": round(sampler.final_total_bytes / MB, 1),
        "roles": {role: memory.as_dict() for role, memory in sorted(sampler.roles.items(), key=_role_sort)},
        "commands": {role: sorted(memory.commands)[:3] for role, memory in sampler.roles.items()},
    }


def _role_sort(item: tuple[str, RoleMemory]) -> tuple[int, str]:
    role = item[0]
    return (ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER), role)


def render(result: dict[str, object], command: str, load: str) -> str:
    roles, extra = result["roles"], result.get("extra_env") or {}
    assert isinstance(roles, dict) and isinstance(extra, dict)
    lines = [
        "# Memory of each platform process",
        "",
        f"`{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 1024**3:.1f} GB, load average {load} before the run. `factory up` "
        f"(fresh data dir, its own Mosquitto, the simulated fleet) gave its first predictions after "
        f"{result['ready_after_s']} s and ran {result['minutes_after_ready']} min more; every process under the "
        f"launcher sampled every {result['interval_s']} s ({result['samples']} samples)."
        + (f" Extra environment: `{' '.join(f'{k}={v}' for k, v in extra.items())}`." if extra else ""),
        "",
        "| role | processes | peak RSS MB | peak at (s after launch) | largest single process MB | final RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for role, figures in roles.items():
        lines.append(
            f"| {role} | {figures['processes']} | {figures['peak_mb']:,.0f} | {figures['peak_at_s']} | "
            f"{figures['peak_single_process_mb']:,.0f} | {figures['final_mb']:,.0f} |"
        )
    lines += [
        f"| **whole tree** | | {result['peak_total_mb']:,.0f} | | | {result['final_total_mb']:,.0f} |",
        "",
        "Peak: the largest sum over a role's processes at one sample (run workers come and go: each",
        "Dagster run is a process of its own, plus a process per step under the multiprocess executor).",
        "Final: the last sample before the platform was stopped. RSS counts shared pages (libraries, forked",
        "memory) once per process, so the whole-tree figure is an upper bound on what the platform holds.",
        "The MLflow server role includes the job-runner processes (huey consumers) MLflow 3's server starts",
        "beside its web server unless `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`; the launcher's own figure",
        "includes the first energy_iforest training, which it runs in-process before starting Dagster.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes to run after the first predictions")
    parser.add_argument("--machines", type=int, default=5)
    parser.add_argument("--robots", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1.0, help="messages per asset per second")
    parser.add_argument("--window-seconds", type=float, help="FACTORY_WINDOW_SECONDS (default: the platform's)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for factory up (try a fix)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; don't write results/memory.md")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    up_args = ["--machines", str(args.machines), "--robots", str(args.robots), "--rate", f"{args.rate:g}"]
    command = shlex.join([".venv/bin/python", "benchmarks/memory.py", *(argv if argv is not None else sys.argv[1:])])
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    extra_env = dict(item.split("=", 1) for item in args.env)
    result = run(args.minutes, up_args, args.window_seconds, args.interval, extra_env)
    result["extra_env"] = extra_env
    text = render(result, command, load)
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
