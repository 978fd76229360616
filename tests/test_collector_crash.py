"""SIGKILL the collector process mid-stream, again and again: no acknowledged message lost, none twice.

The collector runs as `python -m sensors.collector` (what `factory collect` runs), against its own
Mosquitto with persistence on a free port. A publisher sends a numbered QoS 1 stream while the test
kills the collector at moments drawn from a seeded RNG (after a random delay of streaming, right
after a window was sealed, during start-up recovery) and restarts it. At the end the collector is
stopped with SIGTERM, and every message the broker acknowledged to the publisher must be in exactly
one sealed window.
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

import paho.mqtt.client as paho
import polars as pl
import pytest

from factory_pipelines import mqtt
from factory_pipelines.broker import RunningBroker, start_local_broker
from factory_pipelines.windows import iter_sealed_keys, read_window, sealed_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = 20251125
MESSAGES = 7000
RATE_PER_S = 700.0  # a 10 s stream: long enough for every kill and restart to land mid-stream
ASSETS = ("press-1", "press-2")
COLLECTOR_ID = "crash-test"
STEP_TIMEOUT_S = 20.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


class CollectorProcess:
    """One incarnation of `python -m sensors.collector`, logging to its own file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sensors.collector"],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_subscribed(self) -> None:
        def _ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"collector exited with {self.process.returncode}:\n{self.log()}")
            return "subscribed to" in self.log()

        wait_until(_ready, "the collector to subscribe")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STEP_TIMEOUT_S)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STEP_TIMEOUT_S)


class StreamPublisher(threading.Thread):
    """Publishes MESSAGES numbered QoS 1 messages at RATE_PER_S and records which the broker acknowledged."""

    def __init__(self, url: str) -> None:
        super().__init__(name="stream-publisher", daemon=True)
        self.url = url
        self.acknowledged: set[tuple[str, int]] = set()
        self.failures: list[str] = []

    def run(self) -> None:
        client = mqtt.make_client("crash-test-publisher")
        mqtt.connect(client, self.url)
        client.loop_start()
        in_flight: deque[tuple[tuple[str, int], paho.MQTTMessageInfo]] = deque()
        started = time.monotonic()
        try:
            for number in range(MESSAGES):
                asset = ASSETS[number % len(ASSETS)]
                seq = number // len(ASSETS)
                body = {"asset_id": asset, "seq": seq, "ts": datetime.now(UTC).isoformat(), "Temperature_C": 60.0}
                info = client.publish(f"factory/main/{asset}/telemetry", json.dumps(body), qos=1)
                in_flight.append(((asset, seq), info))
                while in_flight and (len(in_flight) > 500 or in_flight[0][1].is_published()):
                    self._settle(*in_flight.popleft())
                pause = started + (number + 1) / RATE_PER_S - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # pacing the stream, not synchronisation
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


def durable_keys(windows_dir: Path) -> set[tuple[str, int]]:
    """(asset_id, seq) of every row on disk: sealed windows and open part files."""
    frames = [read_window(windows_dir, key).select("asset_id", "seq") for key in iter_sealed_keys(windows_dir)]
    frames += [pl.read_ipc(part, columns=["asset_id", "seq"]) for part in (windows_dir / "open").glob("*/part-*")]
    if not frames:
        return set()
    return set(pl.concat(frames).iter_rows())


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
def collector_processes() -> Iterator[list[CollectorProcess]]:
    """Every collector process the test starts; any still alive when it ends (a failure) is killed."""
    processes: list[CollectorProcess] = []
    yield processes
    for collector in processes:
        if collector.process.poll() is None:
            collector.kill()


@pytest.mark.timeout(90)
def test_sigkill_at_any_moment_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, crash_broker: RunningBroker, collector_processes: list[CollectorProcess]
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
    incarnation = 0

    def start() -> CollectorProcess:
        nonlocal incarnation
        incarnation += 1
        collector_processes.append(CollectorProcess(env, tmp_path / f"collector-{incarnation}.log"))
        return collector_processes[-1]

    collector = start()
    collector.wait_subscribed()  # the persistent session exists from here on: nothing published is missed
    publisher = StreamPublisher(crash_broker.url)
    publisher.start()

    kill_moments: list[str] = []

    def kill_mid_stream(how: str) -> None:
        assert publisher.is_alive(), f"the stream ended before kill {len(kill_moments) + 1} ({how})"
        collector.kill()
        kill_moments.append(how)

    # 1) after a random stretch of streaming
    wait_until(lambda: len(durable_keys(windows_dir)) > 0, "first rows on disk")
    delay = rng.uniform(0.2, 1.0)
    time.sleep(delay)  # the kill point itself: a random moment while messages flow
    kill_mid_stream(f"{delay:.2f} s into the stream")

    # 2) right after a window was sealed (a seal may be half done: parts not yet removed)
    collector = start()
    collector.wait_subscribed()
    sealed_before = sealed_count(windows_dir)
    wait_until(lambda: sealed_count(windows_dir) > sealed_before, "a window sealed by the new incarnation")
    kill_mid_stream("just after a seal")

    # 3) during start-up: recovery of the open window, dedup index rebuild, or the first redeliveries
    collector = start()
    delay = rng.uniform(0.3, 1.2)
    time.sleep(delay)
    kill_mid_stream(f"{delay:.2f} s after start")

    # 4) once more while redelivered and new messages mix
    collector = start()
    collector.wait_subscribed()
    delay = rng.uniform(0.05, 0.6)
    time.sleep(delay)
    kill_mid_stream(f"{delay:.2f} s after subscribing")

    # The last incarnation drains the stream and is stopped cleanly.
    collector = start()
    collector.wait_subscribed()
    publisher.join(timeout=STEP_TIMEOUT_S * 2)
    assert not publisher.is_alive() and not publisher.failures, publisher.failures[:5]
    assert len(publisher.acknowledged) == MESSAGES
    wait_until(lambda: durable_keys(windows_dir) >= publisher.acknowledged, "every acknowledged message on disk")
    assert collector.terminate() == 0, collector.log()[-3000:]

    assert len(kill_moments) >= 3, kill_moments
    keys = list(iter_sealed_keys(windows_dir))
    rows = pl.concat([read_window(windows_dir, key).select("asset_id", "seq") for key in keys])
    duplicates = rows.group_by("asset_id", "seq").len().filter(pl.col("len") > 1)
    assert duplicates.height == 0, f"{duplicates.height} messages sealed twice, e.g. {duplicates.head(5).rows()}"
    assert set(rows.iter_rows()) == publisher.acknowledged  # none lost
    assert rows.height == MESSAGES
    assert list((windows_dir / "open").glob("*/part-*")) == []  # a clean stop leaves no open parts
    final_log = collector.log()
    assert "SIGTERM received" in final_log and "sealed window" in final_log
