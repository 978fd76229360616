"""`factory up`: start the whole platform on one machine and stop all of it on Ctrl-C.

Order matters: the broker and the MLflow server come first (every other process talks to
them); collector, API and simulator start next so windows accumulate while the first model
trains; Dagster comes last, and its sensor picks up every window sealed in the meantime.
Each child writes its log to `{data_dir}/logs/{name}.log`; a child that dies is restarted a
few times before `factory up` gives up and stops everything.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import httpx
from rich.console import Console
from rich.table import Table

from factory_pipelines.api_keys import KEY_PREFIX
from factory_pipelines.settings import FactorySettings

STOP_GRACE_S = 20.0
MAX_RESTARTS = 3
READY_TIMEOUT_S = 180.0


def mlflow_server_command(settings: FactorySettings, host: str) -> tuple[list[str], dict[str, str]]:
    """argv and extra environment of the MLflow tracking server, on SQLite or PostgreSQL.

    The backend store goes by environment, not argv: a PostgreSQL URL's password would show in `ps`.
    MLflow 3's server also starts job-runner processes beside its web server; the platform runs no
    MLflow jobs, and they held 2.3 of the server's 2.9 GB (benchmarks/results/memory.md).
    """
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--artifacts-destination", str(settings.mlflow_artifacts_dir),
        "--host", host, "--port", str(settings.mlflow_port), "--workers", "1",
    ]  # fmt: skip
    env = {
        "MLFLOW_BACKEND_STORE_URI": settings.resolved_mlflow_backend_store_uri,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    return argv, env


@dataclass
class PlatformOptions:
    machines: int = 5
    robots: int = 3
    rate_hz: float = 1.0
    faults: dict[str, str] = field(default_factory=dict)
    simulator: bool = True
    train_missing: bool = True


@dataclass
class ManagedProcess:
    """A child process of `factory up`, restartable, with its own log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    restartable: bool = True
    one_shot: bool = False  # a job that finishes (e.g. first trainings): its exit is reported, not fatal
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    reported: bool = False

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own process group: the launcher decides the shutdown order, not the terminal's
            # Ctrl-C; SIGINT restored to default so `dagster dev` honours it (STACK-NOTES).
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        log.close()

    @property
    def exit_code(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open(errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))


class PlatformError(RuntimeError):
    pass


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _wait_http(url: str, timeout_s: float, alive: Callable[[], bool], stop: threading.Event) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stop.is_set():
            raise PlatformError("interrupted while starting")
        if not alive():
            raise PlatformError(f"process serving {url} exited before it answered")
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        stop.wait(0.5)
    raise PlatformError(f"{url} did not answer within {timeout_s:.0f} s")


DEMO_KEY_FILE = "demo-admin-key"
DEMO_OPCUA_USER_FILE = "demo-opcua-user"


def demo_access(settings: FactorySettings, console: Console) -> dict[str, str]:
    """What the local demo opens up, said out loud: anonymous reads, and an admin key when none is configured.

    Settings given explicitly (environment, `.env`, YAML) win: the demo only fills in what is unset.
    """
    env: dict[str, str] = {}
    if "allow_anonymous_read" not in settings.model_fields_set:
        env["FACTORY_ALLOW_ANONYMOUS_READ"] = "true"
        console.print(
            "[yellow]access:[/yellow] local demo, anyone who reaches the API may read without a key "
            "(FACTORY_ALLOW_ANONYMOUS_READ=false to require one); writes always need a key"
        )
    if not settings.api_key_roles:
        path = settings.data_path / DEMO_KEY_FILE
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(KEY_PREFIX + secrets.token_urlsafe(24) + "\n")
        key = path.read_text().strip()
        env["FACTORY_API_KEYS"] = f"{key}:admin"
        console.print(f"[yellow]access:[/yellow] no FACTORY_API_KEYS set; this demo's admin key is in {path}")
    if settings.opcua_users is None and settings.opcua_security == "secure":
        # OPC UA stays encrypted in the demo: one operator user, its password kept like the admin key.
        path = settings.data_path / DEMO_OPCUA_USER_FILE
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(f"operator:{secrets.token_urlsafe(18)}:operator\n")
        env["FACTORY_OPCUA_USERS"] = path.read_text().strip()
        console.print(f"[yellow]access:[/yellow] no FACTORY_OPCUA_USERS set; this demo's OPC UA user is in {path}")
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "factory_pipelines.cli", *args]


def run_platform(settings: FactorySettings, options: PlatformOptions, console: Console) -> int:
    """Run until Ctrl-C (or SIGTERM); returns the exit code for the command line."""
    from factory_pipelines.broker import ensure_broker
    from factory_pipelines.dagster_instance import ensure_energy_champion, write_dagster_yaml

    logging.getLogger("httpx").setLevel(logging.WARNING)  # readiness polls are not news
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    host = "127.0.0.1"
    busy = [
        f"{name}={port}"
        for name, port in (
            ("FACTORY_API_PORT", settings.api_port),
            ("FACTORY_DAGSTER_PORT", settings.dagster_port),
            ("FACTORY_MLFLOW_PORT", settings.mlflow_port),
            ("FACTORY_MODBUS_PORT", settings.modbus_port),
            ("FACTORY_OPCUA_PORT", settings.opcua_port),
        )
        if not _port_free(host, port)
    ]
    if busy:
        console.print(f"[red]ports already in use: {', '.join(busy)}; set those variables to free ports[/red]")
        return 2

    started = time.monotonic()
    processes: list[ManagedProcess] = []
    broker = None
    try:
        broker = ensure_broker(settings)
        if broker is None:
            console.print(f"MQTT: using the broker that answers at {settings.mqtt_url}")
        else:
            console.print(f"MQTT: no broker answered, started {broker.kind} at {broker.url}")

        mlflow_url = f"http://{host}:{settings.mlflow_port}"
        settings = settings.model_copy(update={"mlflow_tracking_uri": mlflow_url})
        env = {
            **os.environ,
            **settings.child_env(),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
            # MLflow's default retries make a call to a stopped tracking server hang for minutes.
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3"),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "30"),
        }
        env.update(demo_access(settings, console))
        os.environ.update(settings.child_env())
        write_dagster_yaml(settings)

        def spawn(
            name: str,
            argv: list[str],
            restartable: bool = True,
            one_shot: bool = False,
            extra_env: dict[str, str] | None = None,
        ) -> ManagedProcess:
            child_env = {**env, **(extra_env or {})}
            process = ManagedProcess(name, argv, child_env, settings.logs_dir / f"{name}.log", restartable, one_shot)
            process.start()
            processes.append(process)
            return process

        mlflow_argv, mlflow_env = mlflow_server_command(settings, host)
        mlflow = spawn("mlflow", mlflow_argv, restartable=False, extra_env=mlflow_env)
        console.print("MLflow: starting the tracking server...")
        _wait_http(f"{mlflow_url}/health", READY_TIMEOUT_S, lambda: mlflow.exit_code is None, stop)
        console.print(f"MLflow: ready after {time.monotonic() - started:.0f} s")

        spawn("collector", _cli("collect"))
        api = spawn("api", _cli("serve"))
        spawn("bridge", _cli("bridge"))
        if options.simulator:
            sim_args = ["simulate", "--machines", str(options.machines), "--robots", str(options.robots)]
            sim_args += ["--rate", str(options.rate_hz)]
            for asset, kind in options.faults.items():
                sim_args += ["--fault", f"{asset}={kind}"]
            spawn("simulator", _cli(*sim_args))

        console.print("energy_iforest: checking for a champion (trains the first model if there is none)...")
        version = ensure_energy_champion(settings)
        console.print(f"energy_iforest: champion is version {version}")
        # The other families' first versions train in the background, one after the other; until
        # each has a champion its prediction partitions are skipped, then backfillable.
        if options.train_missing:
            spawn("first-champions", _cli("train", "--missing"), restartable=False, one_shot=True)
            console.print("other models: first versions train in the background (logs/first-champions.log)")

        dagster = spawn(
            "dagster",
            [
                sys.executable, "-m", "dagster", "dev",
                "-m", "factory_pipelines.definitions",
                "-h", host, "-p", str(settings.dagster_port),
            ],
            restartable=False,
        )  # fmt: skip
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        dagster_url = f"http://{host}:{settings.dagster_port}"
        _wait_http(f"{api_url}/health", READY_TIMEOUT_S, lambda: api.exit_code is None, stop)
        _wait_http(f"{dagster_url}/server_info", READY_TIMEOUT_S, lambda: dagster.exit_code is None, stop)

        table = Table(title=f"factory platform up after {time.monotonic() - started:.0f} s", show_header=False)
        table.add_row("Dagster UI", dagster_url)
        table.add_row("MLflow UI", mlflow_url)
        table.add_row("REST API (OpenAPI)", f"{api_url}/docs")
        table.add_row("Latest predictions", f"{api_url}/predictions/latest")
        table.add_row("MQTT broker", settings.mqtt_url)
        table.add_row(
            "SCADA bridge",
            f"Modbus TCP {settings.modbus_host}:{settings.modbus_port}, "
            f"OPC UA opc.tcp://{settings.opcua_host}:{settings.opcua_port}",
        )
        table.add_row("Data dir", str(settings.data_path))
        table.add_row("Logs", str(settings.logs_dir))
        console.print(table)
        console.print(
            f"Windows seal every {settings.window_seconds:g} s; predictions follow each window. Ctrl-C stops all."
        )
        return _supervise(processes, stop, console, f"{api_url}/predictions/latest", started)
    except PlatformError as exc:
        console.print(f"[red]{exc}[/red]")
        for process in processes:
            if process.exit_code is not None:
                console.print(f"--- last lines of {process.log_path} ---\n{process.log_tail()}")
        return 1
    finally:
        console.print("stopping...")
        for process in reversed(processes):
            process.stop()
        if broker is not None:
            broker.stop()
        console.print("stopped.")


def _supervise(
    processes: list[ManagedProcess], stop: threading.Event, console: Console, latest_url: str, started: float
) -> int:
    first_predictions_seen = False
    while not stop.wait(1.0):
        for process in processes:
            code = process.exit_code
            if code is None or process.reported:
                continue
            if process.one_shot:
                process.reported = True
                outcome = "[green]finished[/green]" if code == 0 else f"[yellow]exited with {code}[/yellow]"
                console.print(f"{process.name} {outcome} (log: {process.log_path})")
                continue
            console.print(f"[red]{process.name} exited with {code}[/red]; last lines of its log:")
            console.print(process.log_tail())
            if not process.restartable or process.restarts >= MAX_RESTARTS:
                console.print(f"[red]{process.name} cannot be restarted; stopping the platform[/red]")
                return 1
            process.restarts += 1
            console.print(f"restarting {process.name} ({process.restarts}/{MAX_RESTARTS})")
            process.start()
        if not first_predictions_seen:
            try:
                rows = httpx.get(latest_url, timeout=2.0).json()
            except (httpx.HTTPError, ValueError):
                continue
            items = rows.get("items", rows) if isinstance(rows, dict) else rows
            if items:
                first_predictions_seen = True
                console.print(
                    f"[green]first predictions at {latest_url} after {time.monotonic() - started:.0f} s[/green]"
                )
    return 0
