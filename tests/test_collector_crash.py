"""SIGKILL the collector 24 times during one QoS 1 stream: no acknowledged message lost, none sealed twice.

The collector runs against its own Mosquitto (persistence on) on a free port. A publisher sends a
numbered QoS 1 stream for as long as the kills go on, so every kill lands mid-stream. The kill
moments come from a seeded RNG (seed printed on failure; `CRASH_TEST_SEED=n` replays another):
six kills of each kind, in shuffled order,

* mid-stream: a random 0.1-1 s after the incarnation subscribed, while messages flow;
* just after a seal: as soon as a new sealed window appears (its parts may not be removed yet);
* during start-up recovery: 0-150 ms after recovery began (open parts being sealed, the dedup
  index being read back, or the first redeliveries);
* just after subscribing: 0-100 ms after the SUBACK, while the broker redelivers the backlog.

Each incarnation is its own process, killed by the kernel. They are forked from a launcher that
has imported `sensors.collector` once, because a fresh interpreter spends seconds importing
(mostly MLflow, which the settings module pulls in) and 24 of those would not fit the time
budget; the forked child runs the same `sensors.collector.main()` as `python -m sensors.collector`.
The last incarnation is a real `python -m sensors.collector`, which drains the stream and is
stopped with SIGTERM. Then every message the broker acknowledged to the publisher must be in
exactly one sealed window.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import paho.mqtt.client as paho
import polars as pl
import pytest

from factory_pipelines import mqtt
from factory_pipelines.broker import RunningBroker, start_local_broker
from factory_pipelines.windows import iter_sealed_keys, read_window, sealed_dir
from tests.numbered_stream import durable_keys
from tests.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("CRASH_TEST_SEED", "20251125"))
KILL_KINDS = ("mid-stream", "just after a seal", "during start-up recovery", "just after subscribing")
KILLS_PER_KIND = 6
RATE_PER_S = 600.0
MAX_IN_FLIGHT = 500
ASSETS = ("press-1", "press-2")
COLLECTOR_ID = "crash-test"
STEP_TIMEOUT_S = 30.0

# Runs in the launcher process: import once, then fork one collector per request line (JSON: env, log).
LAUNCHER = r"""
import json, os, signal, sys, traceback
import sensors.collector

signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps dead incarnations at once
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            log_fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.environ.clear()
            os.environ.update(request["env"])
            code = sensors.collector.main([])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    print(pid, flush=True)
"""


class Incarnation:
    """One collector process forked by the launcher, logging to its own file."""

    def __init__(self, pid: int, log_path: Path) -> None:
        self.pid = pid
        self.log_path = log_path

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, what: str) -> None:
        def _logged() -> bool:
            if text in self.log():
                return True
            if not self.alive():
                raise AssertionError(f"collector {self.pid} died before {what}:\n{self.log()[-3000:]}")
            return False

        wait_until(_logged, STEP_TIMEOUT_S, what)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        wait_until(lambda: not self.alive(), STEP_TIMEOUT_S, f"collector {self.pid} to die")


class Launcher:
    """A Python process that has imported the collector and forks incarnations of it on request."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._stderr: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )

    def start(self, env: dict[str, str], log_path: Path) -> Incarnation:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"env": env, "log": str(log_path)}).encode() + b"\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()  # the pid, once the imports are done and the fork happened
        assert line.strip().isdigit(), f"launcher answered {line!r}; exit code {self.process.poll()}"
        return Incarnation(int(line), log_path)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STEP_TIMEOUT_S)
        self._stderr.close()


class StreamPublisher(threading.Thread):
    """Publishes numbered QoS 1 messages at RATE_PER_S until stopped; records which the broker acknowledged."""

    def __init__(self, url: str) -> None:
        super().__init__(name="stream-publisher", daemon=True)
        self.url = url
        self.stop_requested = threading.Event()
        self.published = 0
        self.acknowledged: set[tuple[str, int]] = set()
        self.failures: list[str] = []

    def run(self) -> None:
        client = mqtt.make_client("crash-test-publisher")
        mqtt.connect(client, self.url)
        client.loop_start()
        in_flight: deque[tuple[tuple[str, int], paho.MQTTMessageInfo]] = deque()
        started = time.monotonic()
        try:
            while not self.stop_requested.is_set():
                number = self.published
                asset = ASSETS[number % len(ASSETS)]
                seq = number // len(ASSETS)
                body = {"asset_id": asset, "seq": seq, "ts": datetime.now(UTC).isoformat(), "Temperature_C": 60.0}
                info = client.publish(f"factory/main/{asset}/telemetry", json.dumps(body), qos=1)
                in_flight.append(((asset, seq), info))
                self.published += 1
                while in_flight and (len(in_flight) > MAX_IN_FLIGHT or in_flight[0][1].is_published()):
                    self._settle(*in_flight.popleft())
                pause = started + self.published / RATE_PER_S - time.monotonic()
                if pause > 0:
                    self.stop_requested.wait(pause)  # pacing the stream, not synchronisation
            while in_flight:
                self._settle(*in_flight.popleft())
        finally:
            client.disconnect()
            client.loop_stop()

    def _settle(self, key: tuple[str, int], info: paho.MQTTMessageInfo) -> None:
        info.wait_for_publish(timeout=STEP_TIMEOUT_S)
        if info.is_published():
            self.acknowledged.add(key)
        else:
            self.failures.append(f"{key} not acknowledged by the broker (rc {info.rc})")


def sealed_count(windows_dir: Path) -> int:
    return sum(1 for _ in sealed_dir(windows_dir).glob("*/*.parquet"))


@pytest.fixture
def crash_broker(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[RunningBroker]:
    """A Mosquitto of our own (persistence on, unbounded session queues), so kills stay private."""
    if shutil.which("mosquitto") is None:
        pytest.skip("the crash test needs Mosquitto (persistent sessions survive the collector's restarts)")
    with start_local_broker(free_port(), tmp_path / "broker", prefer="mosquitto") as broker:
        yield broker


@pytest.fixture
def processes() -> Iterator[list[Incarnation | Launcher | subprocess.Popen[bytes]]]:
    """Every process the test starts; any still alive when it ends (a failure) is killed."""
    started: list[Incarnation | Launcher | subprocess.Popen[bytes]] = []
    yield started
    for process in reversed(started):
        if isinstance(process, Incarnation):
            if process.alive():
                process.kill()
        elif isinstance(process, Launcher):
            process.close()
        elif process.poll() is None:
            process.kill()
            process.wait(timeout=STEP_TIMEOUT_S)


def kill_at_a_moment(kind: str, collector: Incarnation, windows_dir: Path, rng: random.Random) -> str:
    """Wait for the moment of this kind (random within it), kill the collector, say when it was."""
    if kind == "during start-up recovery":
        collector.wait_for_log("recovering the windows", "start-up recovery")
        delay = rng.uniform(0.0, 0.15)
        time.sleep(delay)  # the kill point itself: a random moment of start-up
        subscribed = "subscribed to" in collector.log()
        collector.kill()
        return f"{kind}: {delay * 1000:.0f} ms after it began ({'after' if subscribed else 'before'} subscribing)"
    collector.wait_for_log("subscribed to", "the collector to subscribe")
    if kind == "just after a seal":
        sealed_before = sealed_count(windows_dir)
        wait_until(lambda: sealed_count(windows_dir) > sealed_before, STEP_TIMEOUT_S, "a window sealed")
        collector.kill()
        return kind
    delay = rng.uniform(0.1, 1.0) if kind == "mid-stream" else rng.uniform(0.0, 0.1)
    time.sleep(delay)  # the kill point itself: a random moment while messages flow
    collector.kill()
    return f"{kind}: {delay:.2f} s after subscribing"


@pytest.mark.timeout(240)
def test_sigkill_at_any_moment_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, crash_broker: RunningBroker, processes: list[Incarnation | Launcher | subprocess.Popen[bytes]]
) -> None:
    data_dir = tmp_path / "data"
    windows_dir = data_dir / "windows"
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("FACTORY_")},
        "FACTORY_DATA_DIR": str(data_dir),
        "FACTORY_MQTT_URL": crash_broker.url,
        "FACTORY_COLLECTOR_ID": COLLECTOR_ID,
        "FACTORY_WINDOW_SECONDS": "1",
        "FACTORY_WINDOW_MAX_ROWS": "300",  # seals on the row cap too, several parts per interval
        "FACTORY_COLLECTOR_FLUSH_MS": "20",
        "FACTORY_LOG_LEVEL": "INFO",
    }
    rng = random.Random(SEED)
    kinds = [kind for kind in KILL_KINDS for _ in range(KILLS_PER_KIND)]
    rng.shuffle(kinds)
    kills: list[str] = []
    publisher = StreamPublisher(crash_broker.url)
    try:
        launcher = Launcher(env, tmp_path / "launcher.log")
        processes.append(launcher)

        def start(number: int) -> Incarnation:
            processes.append(launcher.start(env, tmp_path / f"collector-{number}.log"))
            return processes[-1]  # type: ignore[return-value]

        collector = start(1)
        collector.wait_for_log("subscribed to", "the first collector to subscribe")
        publisher.start()  # the persistent session exists from here on: nothing published is missed
        wait_until(lambda: durable_keys(windows_dir), STEP_TIMEOUT_S, "first rows on disk")

        for number, kind in enumerate(kinds, start=1):
            if number > 1:
                collector = start(number)
            assert publisher.is_alive(), f"the stream ended before kill {number}"
            moment = kill_at_a_moment(kind, collector, windows_dir, rng)
            kills.append(f"{number:2d}. {moment} (message {publisher.published})")
            print(kills[-1])
        publisher.stop_requested.set()

        # The last incarnation, the real command line, drains the stream and is stopped cleanly.
        final_log = tmp_path / "collector-final.log"
        with final_log.open("wb") as log_file:
            final = subprocess.Popen(
                [sys.executable, "-m", "sensors.collector"],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        processes.append(final)
        publisher.join(timeout=STEP_TIMEOUT_S * 2)
        assert not publisher.is_alive() and not publisher.failures, publisher.failures[:5]
        assert len(publisher.acknowledged) == publisher.published
        wait_until(
            lambda: durable_keys(windows_dir) >= publisher.acknowledged, 60.0, "every acknowledged message on disk"
        )
        final.send_signal(signal.SIGTERM)
        assert final.wait(timeout=STEP_TIMEOUT_S) == 0, final_log.read_text()[-3000:]

        assert len(kills) >= 20, kills
        keys = list(iter_sealed_keys(windows_dir))
        rows = pl.concat([read_window(windows_dir, key).select("asset_id", "seq") for key in keys])
        duplicates = rows.group_by("asset_id", "seq").len().filter(pl.col("len") > 1)
        assert duplicates.height == 0, f"{duplicates.height} messages sealed twice, e.g. {duplicates.head(5).rows()}"
        assert set(rows.iter_rows()) == publisher.acknowledged  # none lost
        assert rows.height == publisher.published
        assert list((windows_dir / "open").glob("*/part-*")) == []  # a clean stop leaves no open parts
        text = final_log.read_text()
        assert "SIGTERM received" in text and "sealed window" in text
    except BaseException as exc:
        exc.add_note(f"seed {SEED} (CRASH_TEST_SEED={SEED} replays it); kills so far:\n" + "\n".join(kills))
        raise
    finally:
        publisher.stop_requested.set()
