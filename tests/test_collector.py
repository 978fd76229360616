"""The window collector against a real broker: windows, legacy payloads, dedup, dead letters, recovery.

Each test runs `Collector.run` on a thread with a stop event, publishes real MQTT messages, and
reads back what the collector wrote through the window file contract (`factory_pipelines.windows`).
Asset ids are unique per test, so messages of other tests on the session broker never interfere.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import polars as pl
import pytest

from factory_pipelines import mqtt
from factory_pipelines.broker import RunningBroker, start_local_broker
from factory_pipelines.settings import FactorySettings
from factory_pipelines.telemetry import parse_telemetry
from factory_pipelines.windows import (
    WINDOW_SCHEMA,
    aligned_window_start,
    iter_sealed_keys,
    parse_window_key,
    read_window,
    sealed_window_path,
    window_key,
)
from sensors.collector import Collector, CollectorStats

WAIT_S = 15.0
SESSION_EXPIRY_S = 5  # test collectors' sessions vanish soon after the test, so the broker stops queueing for them


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll `condition` until it holds; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class RunningCollector:
    """A Collector running on a thread; `stop()` asks it to shut down cleanly and returns its stats."""

    collector: Collector
    stop_event: threading.Event
    thread: threading.Thread
    outcome: list[CollectorStats | BaseException] = field(default_factory=list)

    def stop(self, timeout: float = WAIT_S) -> CollectorStats:
        self.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "collector did not stop in time"
        result = self.outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result


@pytest.fixture
def start_collector() -> Iterator[Callable[..., RunningCollector]]:
    """Start collectors on threads (subscribed when returned); any still running are stopped after the test."""
    running: list[RunningCollector] = []

    def _start(settings: FactorySettings, **options: Any) -> RunningCollector:
        options.setdefault("session_expiry_s", SESSION_EXPIRY_S)
        collector = Collector(settings, **options)
        stop_event = threading.Event()
        outcome: list[CollectorStats | BaseException] = []

        def _run() -> None:
            try:
                outcome.append(collector.run(stop_event))
            except BaseException as exc:  # surfaced by stop()
                outcome.append(exc)

        thread = threading.Thread(target=_run, name=f"collector-{settings.collector_id}", daemon=True)
        handle = RunningCollector(collector, stop_event, thread, outcome)
        running.append(handle)
        thread.start()
        wait_until(lambda: collector.subscribed.is_set() or bool(outcome), f"{settings.collector_id} subscribed")
        if outcome:
            handle.stop()  # raises what made it end
        return handle

    yield _start
    for handle in running:
        if handle.thread.is_alive():
            handle.stop()


@contextlib.contextmanager
def connected_publisher(url: str) -> Iterator[Callable[..., None]]:
    """publish(topic, payload, qos=1): returns once the broker has acknowledged it (QoS 1)."""
    client = mqtt.make_client(f"test-publisher-{uuid.uuid4().hex[:8]}")
    mqtt.connect(client, url)
    client.loop_start()

    def _publish(topic: str, payload: bytes | str | dict[str, Any], qos: int = 1) -> None:
        body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        info = client.publish(topic, body, qos=qos)
        info.wait_for_publish(timeout=WAIT_S)
        assert info.rc == paho.MQTT_ERR_SUCCESS and info.is_published(), f"publish to {topic} failed"

    try:
        yield _publish
    finally:
        client.disconnect()  # wakes paho's network thread, so loop_stop returns at once
        client.loop_stop()


@pytest.fixture
def publisher(mqtt_url: str) -> Iterator[Callable[..., None]]:
    with connected_publisher(mqtt_url) as publish:
        yield publish


def collector_settings(settings: FactorySettings, **overrides: Any) -> FactorySettings:
    overrides.setdefault("collector_id", f"test-{uuid.uuid4().hex[:8]}")
    return settings.model_copy(update=overrides)


def sealed_frame(settings: FactorySettings) -> pl.DataFrame:
    """Every sealed window of this data dir, with its key as an extra column."""
    frames = [
        read_window(settings.windows_dir, key).with_columns(pl.lit(key).alias("window_key"))
        for key in iter_sealed_keys(settings.windows_dir)
    ]
    if not frames:
        return pl.DataFrame(schema={**WINDOW_SCHEMA, "window_key": pl.String()})
    return pl.concat(frames)


def sealed_rows_of(settings: FactorySettings, column: str, values: set[str]) -> pl.DataFrame:
    return sealed_frame(settings).filter(pl.col(column).is_in(list(values)))


def open_part_files(settings: FactorySettings) -> list[Path]:
    return sorted((settings.windows_dir / "open").glob("*/part-*"))


def written_seqs(settings: FactorySettings, asset_id: str) -> list[int | None]:
    """Seqs of an asset's rows that are durable: sealed windows plus open part files."""
    frames = [sealed_frame(settings).drop("window_key")] + [pl.read_ipc(part) for part in open_part_files(settings)]
    return pl.concat(frames).filter(pl.col("asset_id") == asset_id)["seq"].to_list()


def dead_letters(settings: FactorySettings) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for path in sorted(settings.dead_letter_dir.glob("*.jsonl")):
        lines.extend(json.loads(line) for line in path.read_text().splitlines())
    return lines


def envelope(asset_id: str, seq: int | None, kind: str, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"asset_id": asset_id, "ts": datetime.now(UTC).isoformat(), "kind": kind, **fields}
    if seq is not None:
        message["seq"] = seq
    return message


def test_messages_of_several_assets_and_kinds_land_in_windows_sealed_on_time(
    factory_settings: FactorySettings, start_collector: Callable[..., RunningCollector], publisher: Callable[..., None]
) -> None:
    settings = collector_settings(factory_settings)
    running = start_collector(settings)
    tag = uuid.uuid4().hex[:8]
    robot_a, robot_b, press, site = f"robot-a-{tag}", f"robot-b-{tag}", f"press-{tag}", f"lab{tag}"
    sent = [
        (f"factory/main/{robot_a}/telemetry", envelope(robot_a, 1, "robot", temperature=41.5, vibration={"rms": 0.2})),
        (f"factory/main/{robot_a}/telemetry", envelope(robot_a, 2, "robot", temperature=41.7, cycle_count=10)),
        (f"factory/main/{robot_b}/telemetry", envelope(robot_b, 1, "robot", motor_current=3.2)),
        (f"factory/main/{press}/telemetry", envelope(press, 7, "machine", Temperature_C=70.1, Operation_Mode="Active")),
        (f"cleanroom/{site}/status", envelope(f"cleanroom-{site}", 3, "cleanroom", iso_class=5, humidity=40.0)),
        (
            f"factory/main/{robot_b}/telemetry",
            envelope(robot_b, 2, "command_ack", command_id="c-1", command="stop", status="done"),
        ),
    ]
    for topic, payload in sent:
        publisher(topic, payload)
    publisher(f"factory/main/{robot_a}/cmd", {"command_id": "c-2", "command": "slow"})  # not telemetry: ignored
    assets = {robot_a, robot_b, press, f"cleanroom-{site}"}

    # Sealed while the collector keeps running: the window's interval ended.
    wait_until(lambda: sealed_rows_of(settings, "asset_id", assets).height == len(sent), "all rows sealed")
    rows = sealed_rows_of(settings, "asset_id", assets).sort("asset_id", "seq")
    assert rows.drop("window_key").schema == pl.Schema(WINDOW_SCHEMA)
    got = {(r["asset_id"], r["seq"], r["kind"], r["site"], r["topic"]) for r in rows.iter_rows(named=True)}
    assert got == {
        (robot_a, 1, "robot", "main", f"factory/main/{robot_a}/telemetry"),
        (robot_a, 2, "robot", "main", f"factory/main/{robot_a}/telemetry"),
        (robot_b, 1, "robot", "main", f"factory/main/{robot_b}/telemetry"),
        (robot_b, 2, "command_ack", "main", f"factory/main/{robot_b}/telemetry"),
        (press, 7, "machine", "main", f"factory/main/{press}/telemetry"),
        (f"cleanroom-{site}", 3, "cleanroom", site, f"cleanroom/{site}/status"),
    }
    sent_ts = {(p["asset_id"], p["seq"]): datetime.fromisoformat(p["ts"]) for _, p in sent}
    for row in rows.iter_rows(named=True):
        assert row["ts"] == sent_ts[(row["asset_id"], row["seq"])]
        start, collector_id, _part = parse_window_key(row["window_key"])
        assert collector_id == settings.collector_id
        # Windows are assigned by time of receipt.
        assert start <= row["received_at"] < start + timedelta(seconds=settings.window_seconds)
        assert start == aligned_window_start(row["received_at"], settings.window_seconds)
        # The payload column is the validated message, valid against the contract again.
        model = parse_telemetry(row["topic"], row["payload"].encode(), default_site=settings.site)
        assert model is not None and model.asset_id == row["asset_id"] and model.seq == row["seq"]
    assert json.loads(rows.filter(pl.col("asset_id") == press)["payload"][0])["Temperature_C"] == 70.1

    stats = running.stop()
    assert stats.ignored >= 1  # the cmd message
    assert stats.received == stats.acked  # every QoS 1 message acknowledged
    assert open_part_files(settings) == []


def test_windows_seal_at_the_row_cap_in_parts_and_empty_intervals_make_no_window(
    factory_settings: FactorySettings, start_collector: Callable[..., RunningCollector], publisher: Callable[..., None]
) -> None:
    settings = collector_settings(factory_settings, window_max_rows=5, window_seconds=1)
    start_collector(settings)
    asset = f"robot-{uuid.uuid4().hex[:8]}"
    topic = f"factory/main/{asset}/telemetry"
    for seq in range(12):
        publisher(topic, envelope(asset, seq, "robot", temperature=40.0 + seq))
    wait_until(lambda: sealed_rows_of(settings, "asset_id", {asset}).height == 12, "12 rows sealed")
    first = sealed_rows_of(settings, "asset_id", {asset})
    per_window = first.group_by("window_key").len()
    assert per_window["len"].max() <= 5
    # 12 rows in at most two intervals: some interval holds 6+ rows, so it was cut into parts 000, 001, ...
    parts_by_start: dict[datetime, list[int]] = {}
    for key in per_window["window_key"]:
        start, _, part = parse_window_key(key)
        parts_by_start.setdefault(start, []).append(part)
    assert any(sorted(parts) == list(range(len(parts))) and len(parts) >= 2 for parts in parts_by_start.values())
    assert sorted(first["seq"].to_list()) == list(range(12))

    # Let one whole interval pass with no message, then publish again.
    last_received = first["received_at"].max()
    quiet_until = aligned_window_start(last_received, settings.window_seconds) + timedelta(
        seconds=2 * settings.window_seconds
    )
    wait_until(lambda: datetime.now(UTC) >= quiet_until, "an empty interval to pass")
    publisher(topic, envelope(asset, 12, "robot", temperature=52.0))
    wait_until(lambda: sealed_rows_of(settings, "asset_id", {asset}).height == 13, "13th row sealed")
    rows = sealed_rows_of(settings, "asset_id", {asset})
    window_starts = {parse_window_key(key)[0] for key in rows["window_key"].unique()}
    receipt_starts = {aligned_window_start(t, settings.window_seconds) for t in rows["received_at"]}
    assert window_starts == receipt_starts  # no window for the empty interval in between
    empty_start = aligned_window_start(last_received, settings.window_seconds) + timedelta(
        seconds=settings.window_seconds
    )
    assert empty_start not in window_starts


def test_legacy_device_payloads_are_accepted(
    factory_settings: FactorySettings, start_collector: Callable[..., RunningCollector], publisher: Callable[..., None]
) -> None:
    """SEED-CLIENTS.md: QoS 0, no seq, asset id from the topic, ts from receipt, extra fields kept."""
    settings = collector_settings(factory_settings)
    running = start_collector(settings)
    tag = uuid.uuid4().hex[:8]
    robot, machine = f"robot-{tag}", f"M{tag}"
    epoch = 1_764_000_000.5
    legacy = [
        (
            f"factory/main/{robot}/telemetry",
            {"temperature": 45.2, "vibration": {"rms": 0.35}, "health_score": 85, "firmware": "3.1", "marker": tag},
        ),
        (
            f"factory/machine/{machine}/telemetry",
            {
                "timestamp": epoch,
                "Machine_ID": machine,
                "Operation_Mode": "Active",
                "Temperature_C": 71.3,
                "Vibration_Hz": 3.4,
                "Power_Consumption_kW": 8.1,
                "Network_Latency_ms": 12.0,
                "Packet_Loss_%": 0.4,
                "Quality_Control_Defect_Rate_%": 1.2,
                "Production_Speed_units_per_hr": 410,
                "Predictive_Maintenance_Score": 0.8,
                "Error_Rate_%": 2.0,
                "Efficiency_Status": "High",
                "marker": tag,
            },
        ),
        (f"factory/machine/{machine}/maintenance", {"timestamp": epoch, "vibration": 3.9, "temperature": 70.0}),
        ("factory/energy/stats", {"timestamp": epoch, "current_load": 120.5, "marker": tag}),
        ("factory/network/stats", {"timestamp": epoch, "latency": 14.0, "packet_loss": 0.1, "marker": tag}),
        ("cleanroom/main/status", {"particles_per_m3": {"0.5": 3000.0}, "temperature": 21.0, "marker": tag}),
    ]
    for topic, payload in legacy:
        publisher(topic, payload, qos=0)

    def tagged() -> pl.DataFrame:
        return sealed_frame(settings).filter(
            pl.col("payload").str.contains(tag, literal=True) | pl.col("asset_id").is_in([robot, machine])
        )

    wait_until(lambda: tagged().height == len(legacy), "legacy rows sealed")
    rows = {(r["topic"]): r for r in tagged().iter_rows(named=True)}
    assert set(rows) == {topic for topic, _ in legacy}
    assert all(row["seq"] is None for row in rows.values())

    robot_row = rows[f"factory/main/{robot}/telemetry"]
    assert (robot_row["asset_id"], robot_row["kind"]) == (robot, "robot")
    assert robot_row["ts"] == robot_row["received_at"]  # no ts sent: the time of receipt
    robot_payload = json.loads(robot_row["payload"])
    assert robot_payload["firmware"] == "3.1" and robot_payload["vibration"] == {"rms": 0.35}

    machine_row = rows[f"factory/machine/{machine}/telemetry"]
    assert (machine_row["asset_id"], machine_row["kind"], machine_row["site"]) == (machine, "machine", "main")
    assert machine_row["ts"] == datetime.fromtimestamp(epoch, UTC)  # the device's epoch `timestamp`
    machine_payload = json.loads(machine_row["payload"])
    assert machine_payload["Packet_Loss_%"] == 0.4 and machine_payload["marker"] == tag

    kinds = {topic: (row["asset_id"], row["kind"]) for topic, row in rows.items()}
    assert kinds[f"factory/machine/{machine}/maintenance"] == (machine, "maintenance")
    assert kinds["factory/energy/stats"] == ("plant-energy", "energy_stats")
    assert kinds["factory/network/stats"] == ("plant-network", "network_stats")
    assert kinds["cleanroom/main/status"] == ("cleanroom-main", "cleanroom")
    assert json.loads(rows["factory/energy/stats"]["payload"])["current_load"] == 120.5
    assert running.stop().dead_letters == 0


def test_duplicates_by_asset_and_seq_are_dropped_also_after_a_restart(
    factory_settings: FactorySettings, start_collector: Callable[..., RunningCollector], publisher: Callable[..., None]
) -> None:
    settings = collector_settings(factory_settings)
    running = start_collector(settings)
    asset = f"robot-{uuid.uuid4().hex[:8]}"
    topic = f"factory/main/{asset}/telemetry"
    first, second = envelope(asset, 1, "robot", temperature=40.0), envelope(asset, 2, "robot", temperature=41.0)
    publisher(topic, first)
    publisher(topic, first)  # the same message again (a redelivery)
    publisher(topic, second)
    no_seq = {"temperature": 39.0}
    publisher(topic, no_seq)
    publisher(topic, no_seq)  # without seq nothing identifies a duplicate: kept at least once
    # Same seq, different ts: a publisher that restarted its counter, not a redelivery.
    restarted = envelope(asset, 1, "robot", temperature=42.0)
    restarted["ts"] = (datetime.fromisoformat(first["ts"]) + timedelta(seconds=1)).isoformat()
    publisher(topic, restarted)
    wait_until(lambda: len(written_seqs(settings, asset)) == 5, "5 rows written")  # the last one sent is among them
    stats = running.stop()
    assert stats.duplicates_dropped == 1

    rows = sealed_rows_of(settings, "asset_id", {asset})
    assert rows.height == 5
    assert sorted(rows["seq"].drop_nulls().to_list()) == [1, 1, 2]
    assert rows.filter(pl.col("seq").is_null()).height == 2

    # A new collector process with the same id rebuilds the index from its sealed windows.
    running = start_collector(settings)
    assert running.collector.stats.dedup_keys_loaded >= 3
    publisher(topic, second)  # already sealed before the restart
    publisher(topic, envelope(asset, 3, "robot", temperature=43.0))
    wait_until(lambda: 3 in written_seqs(settings, asset), "seq 3 written")
    stats = running.stop()
    assert stats.duplicates_dropped == 1
    rows = sealed_rows_of(settings, "asset_id", {asset})
    assert sorted(rows["seq"].drop_nulls().to_list()) == [1, 1, 2, 3]


def test_malformed_payloads_go_to_the_dead_letter_file_and_the_stream_goes_on(
    factory_settings: FactorySettings, start_collector: Callable[..., RunningCollector], publisher: Callable[..., None]
) -> None:
    settings = collector_settings(factory_settings, max_payload_bytes=4096)
    running = start_collector(settings)
    asset = f"robot-{uuid.uuid4().hex[:8]}"
    topic = f"factory/main/{asset}/telemetry"
    huge = json.dumps({"temperature": 40.0, "blob": "x" * 10_000}).encode()
    not_utf8 = b'{"temperature": \xff\xfe 40}'
    bad = [
        (topic, b'{"temperature": 40.0', "not valid JSON"),
        (topic, json.dumps({"temperature": "hot"}).encode(), "temperature"),
        (topic, json.dumps({"kind": "command_ack", "command": "stop", "status": "done"}).encode(), "command_id"),
        (topic, huge, "exceeds max_payload_bytes=4096"),
        (topic, not_utf8, "not UTF-8"),
        (topic, b"[1, 2, 3]", "must be a JSON object"),
        (f"factory/main/{asset}/telemetry/extra", b"{}", "fits no telemetry layout"),
        ("factory/energy/stats", b'{"timestamp": 1e20, "current_load": 1.0}', "timestamp"),  # past year 9999
        (topic, b'{"seq": 99999999999999999999999, "temperature": 40.0}', "seq"),  # no 64-bit column holds it
    ]
    for bad_topic, payload, _ in bad:
        publisher(bad_topic, payload)
    publisher(topic, envelope(asset, 1, "robot", temperature=40.0))  # the stream goes on

    wait_until(lambda: sealed_rows_of(settings, "asset_id", {asset}).height == 1, "the valid message after them")
    letters = dead_letters(settings)
    assert len(letters) == len(bad)
    for letter, (bad_topic, payload, reason) in zip(letters, bad, strict=True):
        assert letter["topic"] == bad_topic
        assert reason in letter["reason"], letter
        assert letter["size"] == len(payload)
        datetime.fromisoformat(letter["received_at"])
    oversize = letters[3]
    assert "payload" not in oversize and oversize["sha256"] == hashlib.sha256(huge).hexdigest()
    assert (settings.dead_letter_dir / oversize["payload_file"]).read_bytes() == huge
    assert base64.b64decode(letters[4]["payload_base64"]) == not_utf8
    assert letters[0]["payload"] == '{"temperature": 40.0'

    stats = running.stop()
    assert stats.dead_letters == len(bad)
    assert stats.acked == len(bad) + 1  # dead letters are acknowledged once durable
    assert sealed_rows_of(settings, "asset_id", {asset})["seq"].to_list() == [1]


def _write_part(directory: Path, number: int, frame: pl.DataFrame) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    frame.write_ipc(directory / f"part-{number:06d}.arrow")


def _rows(asset: str, seqs: range, received: datetime) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "asset_id": [asset] * len(seqs),
            "kind": ["robot"] * len(seqs),
            "site": ["main"] * len(seqs),
            "topic": [f"factory/main/{asset}/telemetry"] * len(seqs),
            "ts": [received] * len(seqs),
            "received_at": [received] * len(seqs),
            "seq": list(seqs),
            "payload": [json.dumps({"asset_id": asset, "seq": s}) for s in seqs],
        },
        schema=WINDOW_SCHEMA,
    )


def test_start_recovers_open_parts_left_by_a_crash(
    factory_settings: FactorySettings, start_collector: Callable[..., RunningCollector], publisher: Callable[..., None]
) -> None:
    """What a SIGKILL can leave behind: parts of a past interval, a finished seal with its parts, a torn temp."""
    settings = collector_settings(factory_settings)
    asset = f"robot-{uuid.uuid4().hex[:8]}"
    past = aligned_window_start(datetime.now(UTC) - timedelta(minutes=2), settings.window_seconds)
    open_root = settings.windows_dir / "open"
    # 1) an unsealed window whose interval is over: sealed at start from its two parts
    unsealed = window_key(past, settings.collector_id)
    _write_part(open_root / unsealed, 1, _rows(asset, range(0, 3), past))
    _write_part(open_root / unsealed, 2, _rows(asset, range(3, 5), past))
    (open_root / unsealed / ".part-000003.arrow.abc.tmp").write_bytes(b"torn")
    # 2) a window whose seal completed but whose parts were not yet removed: parts go, the seal stays
    later = past + timedelta(seconds=settings.window_seconds)
    done = window_key(later, settings.collector_id)
    sealed_path = sealed_window_path(settings.windows_dir, done)
    sealed_path.parent.mkdir(parents=True, exist_ok=True)
    _rows(asset, range(5, 8), later).write_parquet(sealed_path)
    _write_part(open_root / done, 1, _rows(asset, range(5, 8), later))
    # 3) another collector's open window is none of our business
    foreign = window_key(past, "someone-else")
    _write_part(open_root / foreign, 1, _rows(asset, range(100, 101), past))

    # A horizon far shorter than the collector's downtime: what was read back must count from now.
    running = start_collector(settings, dedup_horizon_minutes=0.05)
    stats = running.collector.stats
    assert stats.recovered_windows == 2 and stats.recovered_parts == 2
    assert stats.dedup_keys_loaded == 8
    assert read_window(settings.windows_dir, unsealed)["seq"].to_list() == [0, 1, 2, 3, 4]
    assert read_window(settings.windows_dir, done)["seq"].to_list() == [5, 6, 7]
    assert not (open_root / unsealed).exists() and not (open_root / done).exists()
    assert (open_root / foreign / "part-000001.arrow").exists()

    # Redeliveries of recovered rows are recognised as duplicates (the index was rebuilt from disk).
    topic = f"factory/main/{asset}/telemetry"
    publisher(topic, {"asset_id": asset, "ts": past.isoformat(), "seq": 4, "kind": "robot"})
    publisher(topic, envelope(asset, 8, "robot"))
    publisher(topic, {"asset_id": asset, "ts": later.isoformat(), "seq": 6, "kind": "robot"})
    publisher(topic, envelope(asset, 9, "robot"))
    wait_until(lambda: 9 in written_seqs(settings, asset), "seq 9 written")
    stats = running.stop()
    assert stats.duplicates_dropped == 2
    assert sorted(sealed_rows_of(settings, "asset_id", {asset})["seq"].to_list()) == list(range(10))


def test_shared_subscription_splits_the_stream_between_collectors(
    mqtt_broker: RunningBroker,
    factory_settings: FactorySettings,
    start_collector: Callable[..., RunningCollector],
    publisher: Callable[..., None],
) -> None:
    if mqtt_broker.kind != "mosquitto":
        pytest.skip("shared subscriptions need an MQTT v5 broker (Mosquitto)")
    first = start_collector(collector_settings(factory_settings, collector_id="shared-a"), shared=True)
    second = start_collector(collector_settings(factory_settings, collector_id="shared-b"), shared=True)
    asset = f"robot-{uuid.uuid4().hex[:8]}"
    for seq in range(60):
        publisher(f"factory/main/{asset}/telemetry", envelope(asset, seq, "robot", temperature=40.0))
    # Stopping a member early would strand its unacknowledged share in its session: wait for all first.
    wait_until(lambda: len(written_seqs(factory_settings, asset)) == 60, "60 rows written")
    first.stop()
    second.stop()
    rows = sealed_rows_of(factory_settings, "asset_id", {asset})
    assert sorted(rows["seq"].to_list()) == list(range(60))  # each message exactly once
    per_collector = {parse_window_key(key)[1] for key in rows["window_key"]}
    assert per_collector == {"shared-a", "shared-b"}


def test_the_collector_rides_out_a_broker_restart(
    tmp_path: Path,
    free_port: Callable[[], int],
    factory_settings: FactorySettings,
    start_collector: Callable[..., RunningCollector],
) -> None:
    """The broker goes away mid-stream: the collector reconnects by itself, resubscribes and carries on."""
    if shutil.which("mosquitto") is None:
        pytest.skip("needs Mosquitto to restart on the same port")
    port, broker_dir = free_port(), tmp_path / "own-broker"
    broker = start_local_broker(port, broker_dir, prefer="mosquitto")
    try:
        settings = collector_settings(factory_settings, mqtt_url=broker.url)
        running = start_collector(settings)
        asset = f"robot-{uuid.uuid4().hex[:8]}"
        topic = f"factory/main/{asset}/telemetry"
        with connected_publisher(broker.url) as publish:
            for seq in range(10):
                publish(topic, envelope(asset, seq, "robot"))
        wait_until(lambda: len(written_seqs(settings, asset)) == 10, "the first 10 rows written")

        broker.stop()
        wait_until(lambda: not running.collector.subscribed.is_set(), "the collector to notice the broker is gone")
        broker = start_local_broker(port, broker_dir, prefer="mosquitto")
        # Publish once the collector is back: whether the broker kept the session is the broker's business.
        wait_until(lambda: running.collector.subscribed.is_set(), "the collector to reconnect and subscribe")
        with connected_publisher(broker.url) as publish:
            for seq in range(10, 20):
                publish(topic, envelope(asset, seq, "robot"))
        wait_until(lambda: len(written_seqs(settings, asset)) == 20, "all 20 rows written")
        stats = running.stop()
    finally:
        broker.stop()
    assert stats.connections >= 2
    assert sorted(sealed_rows_of(settings, "asset_id", {asset})["seq"].to_list()) == list(range(20))


def test_a_second_collector_with_the_same_id_refuses_to_run(
    factory_settings: FactorySettings, start_collector: Callable[..., RunningCollector]
) -> None:
    settings = collector_settings(factory_settings)
    start_collector(settings)
    with pytest.raises(RuntimeError, match="already running"):
        Collector(settings).run(threading.Event())
