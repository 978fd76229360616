"""Hostile input through a running collector: a fuzz run, and a flood from one publisher.

Fuzz run: 3,000 generated QoS 1 messages (seeded) through a real Mosquitto into a `Collector`:
valid payloads of every model, the same with fields removed or replaced by junk (wrong types,
NaN and infinities as raw JSON, numbers past every limit, lone surrogates, nesting too deep,
dates out of range), random bytes, payloads over `max_payload_bytes`, odd and very long topics,
topics without telemetry. The expected fate of each is what `accept_telemetry` (property-tested
in tests/test_telemetry_properties.py) and the size and UTF-8 rules say; then every valid one
must be in exactly one sealed window, every rejected one in the dead-letter file with its reason,
and the counters must add up exactly. Topics that are not UTF-8 cannot be sent: paho encodes a
topic as UTF-8 (a surrogate fails in the publisher) and Mosquitto drops a client that sends one.

Flood: one publisher sends hundreds of oversize and malformed messages on one topic while others
send valid telemetry; the dead-letter directory must stay within its budget, every valid message
must reach its window, and the collector must never hold more than ReceiveMaximum unacknowledged.
The budget's accounting is also checked on its own, over receipt times minutes and hours apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import threading
import types
import typing
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
import polars as pl
import pytest
from pydantic import AwareDatetime, BaseModel

from factory_pipelines import mqtt
from factory_pipelines.broker import RunningBroker, start_local_broker
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.telemetry import COLLECTOR_SUBSCRIPTIONS, InboundTelemetry, PayloadError, accept_telemetry
from factory_pipelines.windows import iter_sealed_keys, read_window
from sensors.collector import DEAD_LETTER_TOPIC_CHARS, Collector, CollectorStats, DeadLetterBudget
from tests.waiting import wait_until

SEED = 20251126
FUZZ_MESSAGES = 3000
MAX_PAYLOAD_BYTES = 4096  # room for JSON nested deeper than the parser goes (about 1000 levels)
WAIT_S = 30.0
MODELS: dict[str, type[BaseModel]] = {
    model.model_fields["kind"].default: model for model in typing.get_args(InboundTelemetry)
}
TOPIC_CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-_.:~ éüß漢字Ωж🚀"
# Raw JSON text the json module would never write, put where a field's value was.
RAW_TOKENS = (
    "NaN",
    "-Infinity",
    "1e999",
    "1" * 5000,
    "18446744073709551616",
    '"\\ud800"',
    "[" * 1200 + "]" * 1200,  # deeper than json.loads goes
    '{"a":' * 400 + "1" + "}" * 400,  # parses, but deeper than the serializer goes
    '"0001-01-01T00:00:00+01:00"',
    '"9999-12-31T23:59:59-01:00"',
    '"not a time"',
    "true",
    "null",
)


@pytest.fixture
def own_broker(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[RunningBroker]:
    """A broker of this test's own: nothing else publishes into the fuzz run."""
    with start_local_broker(free_port(), tmp_path / "broker") as broker:
        yield broker


# ---- generating messages ----


def random_value(rng: random.Random, annotation: Any, metadata: list[Any]) -> Any:
    """A valid JSON value for a model field of this type and these bounds."""
    bounds = {
        name: getattr(item, name)
        for item in metadata
        for name in ("ge", "gt", "le", "lt", "min_length", "max_length")
        if getattr(item, name, None) is not None
    }
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return random_value(rng, rng.choice(options), metadata)
    if origin is Literal:
        return rng.choice(typing.get_args(annotation))
    if origin is dict:
        return {rng.choice(["0.3", "0.5", "1.0"]): rng.uniform(0, 1e6) for _ in range(rng.randint(0, 3))}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {
            info.alias or name: random_value(rng, info.annotation, info.metadata)
            for name, info in annotation.model_fields.items()
            if rng.random() < 0.5
        }
    if annotation is bool:
        return rng.random() < 0.5
    if annotation is int:
        return rng.randint(int(bounds.get("ge", bounds.get("gt", -1) + 1)), int(min(bounds.get("le", 10**6), 10**6)))
    if annotation is float:
        low, high = bounds.get("ge", bounds.get("gt", -1e3)), bounds.get("le", bounds.get("lt", 1e3))
        return rng.uniform(low, high)
    if annotation is str:
        size = rng.randint(bounds.get("min_length", 0), min(bounds.get("max_length", 12), 12))
        return "".join(rng.choice(TOPIC_CHARACTERS + '"\\\n\t') for _ in range(size))
    if annotation is AwareDatetime:
        return (datetime.now(UTC) - timedelta(seconds=rng.uniform(0, 3600))).isoformat()
    raise NotImplementedError(f"no generator for {annotation!r}")


def topic_of(kind: str, asset: str) -> str:
    return {
        "cleanroom": f"cleanroom/{asset}/status",
        "maintenance": f"factory/machine/{asset}/maintenance",
        "energy_stats": "factory/energy/stats",
        "network_stats": "factory/network/stats",
    }.get(kind, f"factory/main/{asset}/telemetry")


def valid_message(rng: random.Random, number: int) -> tuple[str, dict[str, Any]]:
    kind = rng.choice(sorted(MODELS))
    asset = f"fz-{number}"
    payload: dict[str, Any] = {"kind": kind, "fuzz": number}
    for name, info in MODELS[kind].model_fields.items():
        if name in {"kind", "asset_id", "seq"}:
            continue
        if (info.is_required() and name != "ts") or rng.random() < 0.4:
            payload[info.alias or name] = random_value(rng, info.annotation, info.metadata)
    if rng.random() < 0.8:
        payload["seq"] = number
    if rng.random() < 0.7:
        payload["asset_id"] = asset
    return topic_of(kind, asset), payload


def to_json(payload: dict[str, Any]) -> bytes:
    """JSON of `payload`, where a ("raw", text) value is written as that text."""
    tokens = {f"@@raw-{key}@@": value[1] for key, value in payload.items() if isinstance(value, tuple)}
    marked = {key: f"@@raw-{key}@@" if isinstance(value, tuple) else value for key, value in payload.items()}
    text = json.dumps(marked, allow_nan=True)
    for marker, token in tokens.items():
        text = text.replace(json.dumps(marker), token)
    return text.encode()


def fuzz_message(rng: random.Random, number: int) -> tuple[str, bytes]:
    """One message of the fuzz run: valid, mutated, random bytes, oversize, odd topic or ignored."""
    topic, payload = valid_message(rng, number)
    roll = rng.random()
    if roll < 0.45:
        return topic, to_json(payload)
    if roll < 0.72:  # near-valid: fields removed or replaced by junk
        junk: list[Any] = [
            ("raw", rng.choice(RAW_TOKENS)),  # three times: these are what broke the parser once
            ("raw", rng.choice(RAW_TOKENS)),
            ("raw", rng.choice(RAW_TOKENS)),
            rng.randint(-(10**30), 10**30),
            rng.choice(["", "x" * 300, "漢字", "\x00", "🚀" * 20]),
            [1, {"a": [None, True]}],
            {"nested": {"deeper": [1.5, "two"]}},
            rng.choice([True, False, None]),
        ]
        for key in rng.sample(sorted(payload), k=min(len(payload), rng.randint(1, 3))):
            if key == "fuzz" or rng.random() < 0.3:
                payload.pop(key, None)
            else:
                payload[key] = rng.choice(junk)
        if rng.random() < 0.2:
            payload[rng.choice(["kind", "asset_id", "seq", "ts", "timestamp"])] = rng.choice(junk)
        if rng.random() < 0.3:  # an extra field: kept whatever it holds, so it must at least be storable
            payload["note"] = ("raw", rng.choice(RAW_TOKENS))
        return topic, to_json(payload)
    if roll < 0.80:
        return topic, rng.randbytes(rng.randint(0, 120))
    if roll < 0.85:  # oversize: valid or not, it is too big either way
        payload["pad"] = "p" * rng.randint(MAX_PAYLOAD_BYTES, 8 * MAX_PAYLOAD_BYTES)
        return topic, to_json(payload)[: rng.choice([None, MAX_PAYLOAD_BYTES + 100])]
    if roll < 0.95:  # a topic from random characters (some under factory/), sometimes very long
        parts = [
            "".join(rng.choice(TOPIC_CHARACTERS) for _ in range(rng.randint(1, 8))) for _ in range(rng.randint(1, 5))
        ]
        odd = "/".join(parts)
        odd = rng.choice(
            [odd, f"factory/{odd}", f"factory/main/{odd}/telemetry", "factory/" + "a" * 1200 + "/x/telemetry"]
        )
        return odd, to_json(payload)
    return f"factory/main/fz-{number}/{rng.choice(['cmd', 'alerts'])}", to_json(payload)


@dataclass(frozen=True)
class Fate:
    """What must become of one message: a row (its payload, ts left out), a dead letter (reason key), ignored
    (a topic without telemetry), or unseen (a topic the collector does not subscribe to)."""

    outcome: Literal["row", "dead", "ignored", "unseen"]
    key: str = ""


def expected_fate(topic: str, raw: bytes) -> Fate:
    if not any(paho.topic_matches_sub(subscription, topic) for subscription in COLLECTOR_SUBSCRIPTIONS):
        return Fate("unseen")
    if len(raw) > MAX_PAYLOAD_BYTES:
        return Fate("dead", "oversize")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return Fate("dead", "not UTF-8")
    try:
        accepted = accept_telemetry(topic, raw)
    except PayloadError as exc:
        return Fate("dead", exc.reason)
    if accepted is None:
        return Fate("ignored")
    return Fate("row", row_key(topic, accepted.wire.decode()))


def row_key(topic: str, payload: str) -> str:
    """A row's topic and payload without ts (the collector stamps the time of receipt where none was sent)."""
    fields = json.loads(payload)
    fields.pop("ts")
    return f"{topic} {json.dumps(fields, sort_keys=True, allow_nan=True)}"


def letter_key(topic: str, reason: str) -> str:
    if "exceeds max_payload_bytes" in reason:
        reason = "oversize"
    elif reason.startswith("payload is not UTF-8"):
        reason = "not UTF-8"
    return f"{topic[:100]}|{len(topic) if len(topic) > DEAD_LETTER_TOPIC_CHARS else ''}|{reason}"


# ---- running and feeding a collector ----


@contextlib.contextmanager
def running_collector(settings: FactorySettings, **options: Any) -> Iterator[tuple[Collector, list[CollectorStats]]]:
    """A Collector on a thread, subscribed when yielded; stopped cleanly after, its final stats in the list."""
    collector = Collector(settings, session_expiry_s=30, **options)
    stop = threading.Event()
    outcome: list[CollectorStats | BaseException] = []

    def _run() -> None:
        try:
            outcome.append(collector.run(stop))
        except BaseException as exc:  # re-raised below
            outcome.append(exc)

    thread = threading.Thread(target=_run, name="fuzzed-collector", daemon=True)
    thread.start()
    final: list[CollectorStats] = []
    try:
        wait_until(lambda: collector.subscribed.is_set() or outcome, WAIT_S, "the collector to subscribe")
        yield collector, final
    finally:
        stop.set()
        thread.join(WAIT_S)
    assert not thread.is_alive(), "the collector did not stop"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    final.append(outcome[0])


def publish_all(url: str, messages: list[tuple[str, bytes]], *, in_flight_max: int = 200) -> None:
    """Publish with QoS 1 and return once the broker acknowledged every message."""
    client = mqtt.make_client(f"fuzz-publisher-{uuid.uuid4().hex[:8]}")
    mqtt.connect(client, url)
    client.loop_start()
    in_flight: deque[paho.MQTTMessageInfo] = deque()
    try:
        for topic, payload in messages:
            in_flight.append(client.publish(topic, payload, qos=1))
            while len(in_flight) > in_flight_max:
                in_flight.popleft().wait_for_publish(WAIT_S)
        while in_flight:
            info = in_flight.popleft()
            info.wait_for_publish(WAIT_S)
            assert info.is_published(), f"publish rc {info.rc}"
    finally:
        client.disconnect()
        client.loop_stop()


def sealed_rows(settings: FactorySettings) -> pl.DataFrame:
    frames = [read_window(settings.windows_dir, key) for key in iter_sealed_keys(settings.windows_dir)]
    return pl.concat(frames) if frames else pl.DataFrame()


def dead_letter_lines(settings: FactorySettings) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(settings.dead_letter_dir.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


# ---- the tests ----


@pytest.mark.timeout(120)
def test_fuzz_run_every_message_ends_where_it_must_and_the_counts_add_up(
    tmp_path: Path, own_broker: RunningBroker
) -> None:
    rng = random.Random(SEED)
    messages: list[tuple[str, bytes]] = []
    fates: list[Fate] = []
    row_ids: set[tuple[str, int]] = set()
    while len(messages) < FUZZ_MESSAGES:
        topic, raw = fuzz_message(rng, len(messages))
        fate = expected_fate(topic, raw)
        if fate.outcome == "row":  # keep (asset_id, seq) unique, so no valid message is a duplicate of another
            accepted = accept_telemetry(topic, raw)
            assert accepted is not None
            identity = (accepted.model.asset_id, accepted.model.seq)
            if accepted.model.seq is not None and identity in row_ids:
                continue
            row_ids.add(identity)
        messages.append((topic, raw))
        fates.append(fate)
    tally = Counter(fate.outcome for fate in fates)
    assert min(tally[outcome] for outcome in ("row", "dead", "ignored")) >= 100, tally  # each fate well represented
    seen = len(messages) - tally["unseen"]
    reasons = Counter(fate.key.split(":")[0] for fate in fates if fate.outcome == "dead")
    for kind in ("oversize", "not UTF-8", "not valid JSON", "cannot be stored as JSON"):
        assert reasons[kind] >= 10, reasons  # the corpus reaches each way of being rejected

    settings = load_settings(
        data_dir=tmp_path / "data",
        mqtt_url=own_broker.url,
        collector_id="fuzz",
        window_seconds=2,
        max_payload_bytes=MAX_PAYLOAD_BYTES,
        dead_letter_lines_per_topic_minute=100_000,  # every rejected message gets its own line here
        dead_letter_lines_per_minute=100_000,
    )
    with running_collector(settings) as (collector, final):
        publish_all(own_broker.url, messages)
        wait_until(lambda: collector.stats.received == seen, WAIT_S, f"{seen} messages received")
        assert not collector.stats.paused
    stats = final[0]

    assert stats.received == stats.acked == seen
    assert stats.rows_written == stats.rows_sealed == tally["row"]
    assert stats.dead_letters == tally["dead"] and stats.ignored == tally["ignored"]
    assert stats.duplicates_dropped == 0 and stats.dead_letters_counted_only == 0
    assert stats.rows_written + stats.dead_letters + stats.ignored == seen

    rows = sealed_rows(settings)
    got_rows = Counter(row_key(topic, payload) for topic, payload in rows.select("topic", "payload").iter_rows())
    assert got_rows == Counter(fate.key for fate in fates if fate.outcome == "row")

    letters = dead_letter_lines(settings)
    assert all(letter["reason"] for letter in letters)
    got_letters = Counter(letter_key(letter["topic"], letter["reason"]) for letter in letters)
    want_letters = Counter(
        letter_key(topic, fate.key) for (topic, _), fate in zip(messages, fates, strict=True) if fate.outcome == "dead"
    )
    assert got_letters == want_letters
    # Payloads too big to inline are kept whole in blob files (well within the default budget here).
    oversize = {
        hashlib.sha256(raw).hexdigest(): raw
        for (_, raw), fate in zip(messages, fates, strict=True)
        if fate.key == "oversize"
    }
    blob_lines = [letter for letter in letters if "payload_file" in letter]
    assert {letter["sha256"] for letter in blob_lines} == set(oversize)
    for letter in blob_lines:
        assert (settings.dead_letter_dir / letter["payload_file"]).read_bytes() == oversize[letter["sha256"]]


def tree_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


@pytest.mark.timeout(120)
def test_a_flood_from_one_publisher_stays_within_the_dead_letter_budget_and_others_get_through(
    tmp_path: Path, own_broker: RunningBroker
) -> None:
    topic_budget, lines_per_topic, receive_maximum = 64 * 1024, 20, 50
    settings = load_settings(
        data_dir=tmp_path / "data",
        mqtt_url=own_broker.url,
        collector_id="flood",
        window_seconds=2,
        max_payload_bytes=1024,
        dead_letter_lines_per_topic_minute=lines_per_topic,
        dead_letter_lines_per_minute=1000,
        dead_letter_payload_bytes_per_topic_hour=topic_budget,
        dead_letter_payload_bytes_per_hour=4 * topic_budget,
    )
    rng = random.Random(SEED)
    flood_topic = "factory/main/flooder/telemetry"
    flood = [(flood_topic, rng.randbytes(8192)) for _ in range(400)]  # 3.2 MB of oversize payloads
    flood += [(flood_topic, b'{"temperature": ' + str(n).encode()) for n in range(600)]  # malformed
    rng.shuffle(flood)
    assets = [f"robot-{uuid.uuid4().hex[:6]}-{n}" for n in range(5)]
    valid = [
        (f"factory/main/{asset}/telemetry", json.dumps({"asset_id": asset, "seq": seq, "temperature": 40.0}).encode())
        for seq in range(60)
        for asset in assets
    ]
    started = datetime.now(UTC)
    with running_collector(settings, receive_maximum=receive_maximum) as (collector, final):
        others = threading.Thread(target=publish_all, args=(own_broker.url, valid), daemon=True)
        others.start()
        publish_all(own_broker.url, flood)
        others.join(WAIT_S)
        total = len(flood) + len(valid)
        wait_until(lambda: collector.stats.received == total, WAIT_S, "every message received")
    stats = final[0]
    ended = datetime.now(UTC)

    # Every valid message of the other assets reached its window, once.
    rows = sealed_rows(settings).filter(pl.col("asset_id").is_in(assets))
    assert rows.height == len(valid) and rows.select("asset_id", "seq").n_unique() == len(valid)
    # The flood is accounted for, each message once: a line of its own, or counted in a counter line.
    letters = dead_letter_lines(settings)
    assert all(letter["topic"] == flood_topic for letter in letters)
    own_lines = [letter for letter in letters if "counted_only" not in letter]
    counted = sum(letter["counted_only"] for letter in letters if "counted_only" in letter)
    assert len(own_lines) + counted == len(flood) == stats.dead_letters
    assert counted == stats.dead_letters_counted_only > 0
    assert stats.dead_letter_payloads_dropped > 0
    assert all("sha256" in letter or "payload" in letter for letter in own_lines)
    # ...and what it left on disk stays within the budget: payload bytes per hour, lines per minute.
    hours = {moment.replace(minute=0, second=0, microsecond=0) for moment in (started, ended)}
    minutes = {moment.replace(second=0, microsecond=0) for moment in (started, ended)}
    bound = len(hours) * topic_budget + len(minutes) * (lines_per_topic + 1) * 2048
    used = tree_bytes(settings.dead_letter_dir)
    assert used <= bound, f"{used} bytes in dead-letter/ for a bound of {bound}"
    assert used < sum(len(raw) for _, raw in flood) / 10
    # Memory: never more than ReceiveMaximum QoS 1 messages held unacknowledged.
    assert 0 < stats.max_unacked <= receive_maximum
    assert stats.received == stats.acked == len(flood) + len(valid)
    assert stats.rows_written == len(valid)


def test_dead_letter_budget_counts_per_topic_and_minute_and_renews_each_hour() -> None:
    """The accounting behind the flood bound, over receipt times far apart (no waiting for real minutes)."""
    budget = DeadLetterBudget(
        lines_per_topic_minute=2, lines_per_minute=3, payload_bytes_per_topic_hour=100, payload_bytes_per_hour=150
    )
    minute = 60_000_000
    start = 1_764_000_000 * 1_000_000 // (60 * minute) * (60 * minute)  # the start of an hour
    admitted = [budget.admit_line("a", 10, start + n) for n in range(4)]
    admitted += [budget.admit_line("b", 20, start + 10 + n) for n in range(3)]
    assert admitted == [True, True, False, False, True, False, False]  # 2 for a, then the minute's 3 are used
    assert not budget.counter_lines_due(start + minute - 1)
    assert budget.counter_lines_due(start + minute)
    counts = {topic: (counted.count, counted.size) for _, topic, counted in budget.take_counter_lines(start + minute)}
    assert counts == {"a": (2, 20), "b": (2, 40)}
    assert budget.admit_line("a", 10, start + minute + 1)  # a new minute, new lines
    assert budget.take_counter_lines(start + minute + 2) == []

    assert budget.admit_payload("a", 60, start) and budget.admit_payload("b", 80, start)
    assert not budget.admit_payload("a", 50, start)  # over a's 100 per hour
    assert not budget.admit_payload("c", 20, start)  # over the 150 of all topics per hour
    assert budget.admit_payload("a", 100, start + 60 * minute)  # the next hour starts afresh
