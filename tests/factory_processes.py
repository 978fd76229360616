"""The platform's commands as child processes of a test: started with their own environment and log
file, waited on by what they log, stopped with a signal, and killed if a test leaves them running."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import pytest

from tests.waiting import wait_until

T = TypeVar("T")

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_S = 30.0
LOG_TAIL_CHARS = 4000

# Settings the test session's autouse fixture sets for access; children get them like any other.
INHERITED_FACTORY_VARIABLES = ("FACTORY_ALLOW_ANONYMOUS_READ", "FACTORY_API_KEYS")


def factory_env(**settings: str) -> dict[str, str]:
    """This process's environment without its FACTORY_* settings (but the access ones), plus `settings`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FACTORY_")}
    env |= {name: os.environ[name] for name in INHERITED_FACTORY_VARIABLES if name in os.environ}
    return env | {"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"} | settings


class FactoryProcess:
    """One `factory ...` command running as a child, its output (stdout and stderr) in a log file."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "factory_pipelines.cli", *args],
                cwd=REPO_ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a signal to the test's group never reaches it by accident
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self) -> str:
        return f"--- {self.name} log (tail) ---\n{self.log()[-LOG_TAIL_CHARS:]}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def count(self, marker: str) -> int:
        return self.log().count(marker)

    def wait_for_log(self, marker: str, *, times: int = 1, timeout: float = 30.0, what: str | None = None) -> None:
        """Wait until `marker` appears `times` times in the log; fails at once, with the log, if it exits."""

        def seen() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited with {self.process.returncode}\n{self.log_tail()}")
            return self.count(marker) >= times

        try:
            wait_until(seen, timeout=timeout, what=what or f"{self.name} to log {marker!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Ask it to stop and wait; SIGKILL if it ignores the request. Returns its exit code."""
        if self.alive():
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)
            raise AssertionError(
                f"{self.name} ignored {sig.name} for {STOP_TIMEOUT_S:.0f} s\n{self.log_tail()}"
            ) from None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)


class FactoryProcesses:
    """Starts `factory` commands for one test; whatever is still running at its end is killed."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[FactoryProcess] = []

    def start(self, name: str, args: list[str], env: Mapping[str, str]) -> FactoryProcess:
        process = FactoryProcess(name, args, env, self.log_dir)
        self.started.append(process)
        return process

    def kill_all(self) -> None:
        for process in self.started:
            process.kill()


@pytest.fixture
def factory_processes(tmp_path: Path) -> Iterator[FactoryProcesses]:
    """`factory_processes.start("api", ["serve"], env)`; logs in tmp_path/logs, leftovers killed."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    processes = FactoryProcesses(log_dir)
    yield processes
    processes.kill_all()


def wait_for_part(part: str, check: Callable[[], T], timeout: float, what: str, *processes: FactoryProcess) -> T:
    """`wait_until` for one part of the platform: a failure names the part and shows the processes' logs,
    and each step's duration goes to the test's log (the timeline of a fault test)."""
    started = time.monotonic()
    try:
        result = wait_until(check, timeout=timeout, what=f"{part}: {what}")
    except AssertionError as exc:
        raise AssertionError("\n".join([str(exc), *(process.log_tail() for process in processes)])) from None
    log.info("%s: %s (%.1f s)", part, what, time.monotonic() - started)
    return result
