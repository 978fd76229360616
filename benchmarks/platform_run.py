"""The real platform for a benchmark: `factory up` with a fresh data dir, free ports and its own broker.

Shared by latency.py and memory.py, so both start the platform exactly as a user does and stop it
as Ctrl-C would (SIGINT to the launcher, which stops its children, the broker last).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

PORT_NAMES = ("mqtt", "api", "dagster", "mlflow", "modbus", "opcua")
READY_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class RunningPlatform:
    process: subprocess.Popen[bytes]
    data_dir: Path
    ports: dict[str, int]
    started_at: float  # time.monotonic() when `factory up` was launched

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.ports['mqtt']}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "up.log"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"factory up exited with {self.process.returncode}; see {self.log_path}")

    def has_predictions(self) -> bool:
        try:
            return bool(httpx.get(f"{self.api_url}/predictions/latest", timeout=5).json()["items"])
        except (httpx.HTTPError, KeyError, ValueError, TypeError):
            return False

    def wait_for_predictions(self, timeout_s: float = READY_TIMEOUT_S, poll_s: float = 1.0) -> float:
        """Block until `/predictions/latest` holds something; seconds since launch."""
        deadline = time.monotonic() + timeout_s
        while not self.has_predictions():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no predictions within {timeout_s:.0f} s; see {self.log_path}")
            time.sleep(poll_s)
        return time.monotonic() - self.started_at

    def first_trainings_over(self) -> bool:
        """Has the launcher reported its background first trainings (`factory train --missing`) done?"""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "first-champions finished" in text or "first-champions exited" in text

    def wait_for_first_trainings(self, timeout_s: float = READY_TIMEOUT_S, poll_s: float = 2.0) -> bool:
        """Block until the first trainings are over (they take the CPU for minutes after start-up); False on
        timeout, so a measurement can still go ahead and say so."""
        deadline = time.monotonic() + timeout_s
        while not self.first_trainings_over():
            self.check_alive()
            if time.monotonic() > deadline:
                return False
            time.sleep(poll_s)
        return True


@contextmanager
def factory_up(
    window_seconds: float | None = None,
    up_args: Sequence[str] = (),
    prefix: str = "bench-platform-",
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[RunningPlatform]:
    """`factory up [up_args]` in a fresh data dir on free ports (its own broker); stopped on exit.

    The caller's FACTORY_*, MLFLOW_* and DAGSTER_* variables are dropped; `extra_env` is added last.
    The data dir is removed after a clean run and kept (its path printed) when the block raised.
    """
    ports = {name: free_port() for name in PORT_NAMES}
    data = Path(tempfile.mkdtemp(prefix=prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY_", "MLFLOW_", "DAGSTER_"))}
    env.update(
        FACTORY_DATA_DIR=str(data),
        FACTORY_MQTT_URL=f"mqtt://127.0.0.1:{ports['mqtt']}",
        FACTORY_API_PORT=str(ports["api"]),
        FACTORY_DAGSTER_PORT=str(ports["dagster"]),
        FACTORY_MLFLOW_PORT=str(ports["mlflow"]),
        FACTORY_MODBUS_PORT=str(ports["modbus"]),
        FACTORY_OPCUA_PORT=str(ports["opcua"]),
    )
    if window_seconds is not None:
        env["FACTORY_WINDOW_SECONDS"] = f"{window_seconds:g}"
    env.update(extra_env or {})
    log = (data / "up.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "factory_pipelines.cli", "up", *up_args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield RunningPlatform(process, data, ports, time.monotonic())
    except BaseException:
        print(f"the platform's data dir and logs are kept in {data}", file=sys.stderr)
        raise
    finally:
        stop(process)
        log.close()
    shutil.rmtree(data, ignore_errors=True)  # reached only when the block did not raise


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C for the launcher's group; if it has not stopped after STOP_TIMEOUT_S, SIGKILL for it and
    for every process under it (its children run in sessions of their own, so the group is not enough)."""
    if process.poll() is not None:
        return
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    for child in descendants:
        with suppress(psutil.NoSuchProcess):
            child.kill()
