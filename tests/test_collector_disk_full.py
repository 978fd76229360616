"""Disk full in the data dir: the collector stops acknowledging, says so, and resumes by itself.

The data dir is a small tmpfs mounted for the test (the suite runs as root; without the right to
mount, the tests skip and say why). A filler file leaves a little room; a QoS 1 stream fills the
rest. What the collector acknowledges is read from outside: the collector talks to the broker
through `MqttTap`, a TCP relay that counts the QoS 1 PUBLISH packets the broker hands it and the
PUBACKs it sends back. Deleting the filler frees the disk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import polars as pl
import pytest

from factory_pipelines import mqtt
from factory_pipelines.broker import RunningBroker, start_local_broker
from factory_pipelines.durable_files import append_durable, write_atomic, write_parquet_atomic
from factory_pipelines.settings import load_settings
from factory_pipelines.windows import iter_sealed_keys, read_window
from sensors.collector import Collector, CollectorStats
from tests.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
TMPFS_BYTES = 32 * 1024 * 1024
HEADROOM_BYTES = 192 * 1024  # what the filler leaves: a second or two of the stream
RATE_PER_S = 500.0
STEP_TIMEOUT_S = 30.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on its own 32 MiB tmpfs, unmounted after the test."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot give the collector a small disk")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({result.stderr.strip() or result.returncode})")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill(disk: Path, name: str = "filler.bin", leave: int = HEADROOM_BYTES) -> Path:
    """Take all free space on `disk` but `leave` bytes; delete the file to give it back."""
    filler = disk / name
    size = max(0, shutil.disk_usage(disk).free - leave)
    chunk = b"\0" * (1024 * 1024)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while size > 0:
            size -= os.write(fd, chunk[: min(size, len(chunk))])
    except OSError as exc:
        if exc.errno != errno.ENOSPC:  # the collector took the last bytes meanwhile: full is what we want
            raise
    finally:
        os.close(fd)
    return filler


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(".*.tmp"))


def readable_everywhere(windows_dir: Path) -> set[tuple[str, int]]:
    """(asset_id, seq) of every sealed window and open part: each must be whole and readable."""
    frames = [read_window(windows_dir, key).select("asset_id", "seq") for key in iter_sealed_keys(windows_dir)]
    assert all(".tmp" not in key for key in iter_sealed_keys(windows_dir))
    for part in (windows_dir / "open").glob("*/part-*"):
        try:
            frames.append(pl.read_ipc(part, columns=["asset_id", "seq"]))
        except FileNotFoundError:
            continue  # sealed and removed meanwhile
    return set(pl.concat(frames).iter_rows()) if frames else set()


class MqttTap:
    """A TCP relay between a client and the broker that counts what the client acknowledged.

    Per connection it counts the QoS 1/2 PUBLISH packets the broker sends down and the PUBACKs the
    client sends up; `outstanding` is their difference on the current connection, which the broker
    must keep at or under the client's ReceiveMaximum.
    """

    def __init__(self, broker_url: str) -> None:
        self._upstream = mqtt.broker_address(broker_url)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"mqtt://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.delivered = 0
        self.acked = 0
        self.outstanding = 0
        self.max_outstanding = 0
        threading.Thread(target=self._accept, name="mqtt-tap", daemon=True).start()

    def counts(self) -> tuple[int, int, int]:
        """(delivered, acked, outstanding) now."""
        with self._lock:
            return self.delivered, self.acked, self.outstanding

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            with self._lock:
                self._sockets += [downstream, upstream]
                self.outstanding = 0  # a new connection: the broker redelivers what is unacknowledged
            for source, sink, from_client in ((downstream, upstream, True), (upstream, downstream, False)):
                threading.Thread(target=self._pump, args=(source, sink, from_client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        pending = b""
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
                pending = self._count(pending + chunk, from_client)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _count(self, data: bytes, from_client: bool) -> bytes:
        """Count the whole packets in `data`; hand back the incomplete tail."""
        offset = 0
        while len(data) - offset >= 2:
            length, shift, index = 0, 0, offset + 1
            while index < len(data):
                byte = data[index]
                length |= (byte & 0x7F) << shift
                shift += 7
                index += 1
                if not byte & 0x80:
                    break
            else:
                break  # the length itself is incomplete
            if index + length > len(data):
                break
            packet_type, qos = data[offset] >> 4, (data[offset] >> 1) & 3
            with self._lock:
                if from_client and packet_type == 4:  # PUBACK
                    self.acked += 1
                    self.outstanding -= 1
                elif not from_client and packet_type == 3 and qos:  # PUBLISH, QoS 1 or 2
                    self.delivered += 1
                    self.outstanding += 1
                    self.max_outstanding = max(self.max_outstanding, self.outstanding)
            offset = index + length
        return data[offset:]

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()


class StreamPublisher(threading.Thread):
    """QoS 1 telemetry at RATE_PER_S until stopped, every 25th message bad JSON; records broker PUBACKs."""

    def __init__(self, url: str, asset: str) -> None:
        super().__init__(name="disk-full-publisher", daemon=True)
        self.url = url
        self.asset = asset
        self.stop_requested = threading.Event()
        self.published = 0
        self.acknowledged: set[int] = set()  # seq of good messages the broker acknowledged
        self.acknowledged_bad: set[int] = set()
        self.failures: list[str] = []

    def run(self) -> None:
        client = mqtt.make_client(f"disk-full-publisher-{uuid.uuid4().hex[:6]}")
        mqtt.connect(client, self.url)
        client.loop_start()
        in_flight: deque[tuple[int, bool, paho.MQTTMessageInfo]] = deque()
        started = time.monotonic()
        try:
            while not self.stop_requested.is_set():
                seq = self.published
                bad = seq % 25 == 24
                body = (
                    f'{{"seq": {seq}, "broken": '.encode()
                    if bad
                    else json.dumps(
                        {"asset_id": self.asset, "seq": seq, "ts": datetime.now(UTC).isoformat(), "temperature": 40.0}
                    ).encode()
                )
                in_flight.append((seq, bad, client.publish(f"factory/main/{self.asset}/telemetry", body, qos=1)))
                self.published += 1
                while in_flight and (len(in_flight) > 200 or in_flight[0][2].is_published()):
                    self._settle(*in_flight.popleft())
                pause = started + self.published / RATE_PER_S - time.monotonic()
                if pause > 0:
                    self.stop_requested.wait(pause)  # pacing, not synchronisation
            while in_flight:
                self._settle(*in_flight.popleft())
        finally:
            client.disconnect()
            client.loop_stop()

    def _settle(self, seq: int, bad: bool, info: paho.MQTTMessageInfo) -> None:
        info.wait_for_publish(timeout=STEP_TIMEOUT_S)
        if not info.is_published():
            self.failures.append(f"seq {seq} not acknowledged by the broker (rc {info.rc})")
        (self.acknowledged_bad if bad else self.acknowledged).add(seq)

    def acked_count(self) -> int:
        return len(self.acknowledged) + len(self.acknowledged_bad)


@pytest.fixture
def own_broker(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[RunningBroker]:
    if shutil.which("mosquitto") is None:
        pytest.skip("needs Mosquitto: it keeps unacknowledged QoS 1 messages of a persistent session")
    with start_local_broker(free_port(), tmp_path / "broker", prefer="mosquitto") as broker:
        yield broker


@pytest.mark.timeout(30)
def test_failed_writes_raise_enospc_with_the_path_and_leave_nothing_behind(small_disk: Path) -> None:
    """durable_files on a full disk: errno and path for the caller, no temp file, no half-appended line."""
    fill(small_disk, leave=8192)
    frame = pl.DataFrame({"payload": [os.urandom(64).hex() for _ in range(5000)]})
    journal = small_disk / "journal.jsonl"
    journal.write_bytes(b'{"line": 1}\n')
    attempts: list[tuple[Path, Callable[[], None]]] = [
        (
            small_disk / "open" / "part-000001.arrow",
            lambda: write_atomic(small_disk / "open" / "part-000001.arrow", frame.write_ipc),
        ),
        (small_disk / "sealed" / "w.parquet", lambda: write_parquet_atomic(frame, small_disk / "sealed" / "w.parquet")),
        (journal, lambda: append_durable(journal, b'{"line": 2, "pad": "' + b"x" * 100_000 + b'"}\n')),
    ]
    for path, attempt in attempts:
        with pytest.raises(OSError) as failure:
            attempt()
        assert failure.value.errno == errno.ENOSPC, failure.value
        assert failure.value.filename == str(path)
        assert not (path.exists() and path != journal)
    assert temp_files(small_disk) == []
    assert journal.read_bytes() == b'{"line": 1}\n'  # cut back: the next append starts on a clean line


def _run_in_thread(collector: Collector, stop: threading.Event) -> tuple[threading.Thread, list[Any]]:
    outcome: list[CollectorStats | BaseException] = []

    def _run() -> None:
        try:
            outcome.append(collector.run(stop))
        except BaseException as exc:  # surfaced by the test
            outcome.append(exc)

    thread = threading.Thread(target=_run, name="collector-disk-full", daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.timeout(90)
def test_collector_pauses_on_a_full_disk_reports_it_and_resumes_by_itself(
    small_disk: Path, own_broker: RunningBroker
) -> None:
    """In-process: the stats flags, the ReceiveMaximum bound while paused, and resuming without loss."""
    receive_maximum = 100
    settings = load_settings(
        data_dir=small_disk / "data", mqtt_url=own_broker.url, window_seconds=1, collector_flush_ms=20
    )
    collector = Collector(settings, receive_maximum=receive_maximum, session_expiry_s=60)
    stop = threading.Event()
    thread, outcome = _run_in_thread(collector, stop)
    publisher = StreamPublisher(own_broker.url, f"robot-{uuid.uuid4().hex[:6]}")
    try:
        wait_until(lambda: collector.subscribed.is_set() or outcome, STEP_TIMEOUT_S, "the collector to subscribe")
        assert not outcome, outcome
        filler = fill(small_disk)
        publisher.start()
        stats = wait_until(
            lambda: (s := collector.stats).paused and s, STEP_TIMEOUT_S, "the collector to pause on the full disk"
        )
        assert stats.disk_full and stats.pauses == 1
        assert (
            stats.pause_reason is not None and "ENOSPC" in stats.pause_reason and str(small_disk) in stats.pause_reason
        )
        # The stream goes on: the broker holds it back, we hold at most ReceiveMaximum unacknowledged.
        acked_when_paused = stats.acked
        goal = publisher.acked_count() + 300
        wait_until(lambda: publisher.acked_count() >= goal, STEP_TIMEOUT_S, "300 more messages published")
        stats = collector.stats
        assert stats.paused and stats.acked == acked_when_paused and thread.is_alive()
        wait_until(lambda: collector.stats.max_unacked >= receive_maximum, STEP_TIMEOUT_S, "ReceiveMaximum reached")
        assert collector.stats.max_unacked == receive_maximum and collector.stats.acked == acked_when_paused
        wait_until(lambda: not temp_files(small_disk), 5.0, "no temp file left by a failed write")
        readable_everywhere(settings.windows_dir)

        filler.unlink()
        wait_until(lambda: not collector.stats.paused, STEP_TIMEOUT_S, "the collector to resume by itself")
        publisher.stop_requested.set()
        publisher.join(STEP_TIMEOUT_S)
        assert not publisher.failures, publisher.failures[:5]
        wait_until(
            lambda: {seq for _, seq in readable_everywhere(settings.windows_dir)} >= publisher.acknowledged,
            STEP_TIMEOUT_S,
            "every published message written",
        )
    finally:
        publisher.stop_requested.set()
        stop.set()
        thread.join(STEP_TIMEOUT_S)
    final = outcome[0]
    assert isinstance(final, CollectorStats), final
    assert not final.paused and final.pauses == 1 and final.write_failures >= 1
    assert final.max_unacked <= receive_maximum
    rows = pl.concat([read_window(settings.windows_dir, key) for key in iter_sealed_keys(settings.windows_dir)])
    assert sorted(rows["seq"].to_list()) == sorted(publisher.acknowledged)  # each exactly once


@pytest.mark.timeout(150)
def test_collector_process_on_a_full_disk_stops_acknowledging_and_loses_nothing(
    tmp_path: Path, small_disk: Path, own_broker: RunningBroker
) -> None:
    """`python -m sensors.collector` on the small disk: fill, free, fill again and SIGKILL it while paused.

    Messages it held while paused were not acknowledged, so the kill loses none of them: the next
    incarnation gets them again from the broker, and each lands in exactly one sealed window.
    """
    data_dir = small_disk / "data"
    windows_dir = data_dir / "windows"
    tap = MqttTap(own_broker.url)
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("FACTORY_")},
        "FACTORY_DATA_DIR": str(data_dir),
        "FACTORY_MQTT_URL": tap.url,
        "FACTORY_COLLECTOR_ID": "disk-full",
        "FACTORY_WINDOW_SECONDS": "1",
        "FACTORY_COLLECTOR_FLUSH_MS": "20",
        # every bad message gets its own dead-letter line here, so the test can account for each
        "FACTORY_DEAD_LETTER_LINES_PER_TOPIC_MINUTE": "100000",
        "FACTORY_DEAD_LETTER_LINES_PER_MINUTE": "100000",
    }
    logs = [tmp_path / "collector-1.log", tmp_path / "collector-2.log"]
    collectors: list[subprocess.Popen[bytes]] = []

    def start(log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("wb") as log_file:
            collectors.append(
                subprocess.Popen(
                    [sys.executable, "-m", "sensors.collector"],
                    cwd=REPO_ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            )
        return collectors[-1]

    def logged(log_path: Path, text: str, times: int = 1) -> bool:
        return log_path.read_text(errors="replace").count(text) >= times

    asset = f"press-{uuid.uuid4().hex[:6]}"
    publisher = StreamPublisher(own_broker.url, asset)
    try:
        collector = start(logs[0])
        wait_until(lambda: logged(logs[0], "subscribed to"), 60.0, "the collector to subscribe")
        filler = fill(small_disk)
        publisher.start()

        # 1) Full: it stays up, says so once with the file and the free space, and acknowledges nothing more.
        wait_until(lambda: logged(logs[0], "ERROR"), STEP_TIMEOUT_S, "the collector to report the full disk")
        error_line = next(line for line in logs[0].read_text().splitlines() if "ERROR" in line)
        assert "disk full" in error_line and "ENOSPC" in error_line and str(data_dir) in error_line, error_line
        assert "bytes free" in error_line and "not acknowledged" in error_line, error_line
        # PUBACKs of a batch written just before may still be on their way: let the stream move on a bit.
        goal = publisher.acked_count() + 100
        wait_until(lambda: publisher.acked_count() >= goal, STEP_TIMEOUT_S, "100 more messages published")
        delivered_before, acked_before, _ = tap.counts()
        # It takes what the broker sends until ReceiveMaximum (1000) are unacknowledged; the broker keeps the rest.
        wait_until(lambda: tap.counts()[2] >= 1000, STEP_TIMEOUT_S, "1000 messages held unacknowledged")
        goal = publisher.acked_count() + 200
        wait_until(lambda: publisher.acked_count() >= goal, STEP_TIMEOUT_S, "200 more messages published")
        delivered, acked, outstanding = tap.counts()
        assert collector.poll() is None, logs[0].read_text()[-3000:]
        assert acked == acked_before, f"{acked - acked_before} PUBACKs sent while the disk was full"
        assert delivered > delivered_before and outstanding >= 1000  # it got ReceiveMaximum, acknowledged none
        assert publisher.acked_count() > delivered  # and the broker holds the rest back
        wait_until(lambda: not temp_files(small_disk), 5.0, "no temp file left by a failed write")
        readable_everywhere(windows_dir)

        # 2) Space again: it resumes by itself and acknowledges what it held.
        filler.unlink()
        wait_until(lambda: logged(logs[0], "writes work again"), STEP_TIMEOUT_S, "the collector to resume")
        wait_until(lambda: tap.counts()[1] > acked, STEP_TIMEOUT_S, "acknowledgements to come again")
        assert collector.poll() is None

        # 3) Full again, and killed while paused: what it held was never acknowledged, so nothing is lost.
        filler = fill(small_disk)
        wait_until(lambda: logged(logs[0], "disk full", times=2), STEP_TIMEOUT_S, "the second full disk")
        collector.send_signal(signal.SIGKILL)
        collector.wait(STEP_TIMEOUT_S)
        filler.unlink()
        collector = start(logs[1])
        wait_until(lambda: logged(logs[1], "subscribed to"), 60.0, "the next collector to subscribe")
        publisher.stop_requested.set()
        publisher.join(STEP_TIMEOUT_S)
        assert not publisher.failures, publisher.failures[:5]
        wait_until(
            lambda: {seq for _, seq in readable_everywhere(windows_dir)} >= publisher.acknowledged,
            60.0,
            "every acknowledged message on disk",
        )
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(STEP_TIMEOUT_S) == 0, logs[1].read_text()[-3000:]
    finally:
        publisher.stop_requested.set()
        for process in collectors:
            if process.poll() is None:
                process.kill()
                process.wait(STEP_TIMEOUT_S)
        tap.close()

    rows = pl.concat([read_window(windows_dir, key).select("asset_id", "seq") for key in iter_sealed_keys(windows_dir)])
    duplicates = rows.group_by("seq").len().filter(pl.col("len") > 1)
    assert duplicates.height == 0, f"{duplicates.height} messages sealed twice"
    assert set(rows["seq"].to_list()) == publisher.acknowledged
    assert temp_files(small_disk) == [] and list((windows_dir / "open").glob("*/part-*")) == []
    # Bad messages went to the dead-letter file whole (at least once: a kill may repeat one), no torn line.
    lines = [
        json.loads(line)
        for path in sorted((data_dir / "dead-letter").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert {json.loads(line["payload"] + "0}")["seq"] for line in lines} == publisher.acknowledged_bad
    assert all(line["reason"].startswith("not valid JSON") for line in lines)
