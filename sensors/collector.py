"""The MQTT window collector: telemetry in, sealed window files out, nothing acknowledged lost.

Why it is built this way (DESIGN.md, "Streams, windows, partitions"):

* One thread drives paho in its own loop (`client.loop(timeout)` taken apart: select, read a burst,
  write, keepalive), so receiving, writing and acknowledging never race; paho's client is not
  thread safe and nothing here needs it to be. Only `stats` and `subscribed` are read from outside.
* QoS 1 on a persistent session with manual acknowledgement: the broker keeps every message it
  handed us until we send PUBACK, and we send it only after the message is on disk. A SIGKILL at any
  instant therefore loses nothing the broker counts as delivered; it may redeliver, and dedup on
  (asset_id, seq) drops what was already written (the index is rebuilt from disk on start).
* Group commit: received messages wait in memory (at most `collector_flush_ms`, or until the
  broker's in-flight limit, our ReceiveMaximum, is half used) and are then written as ONE part file
  of the open window (`durable_files.write_atomic`: temp file, fsync, rename, directory fsync), dead
  letters of the batch are appended and fsynced, and only then is the whole batch acknowledged.
* Sealing: when a window's epoch-aligned interval ends (by receipt time) or it reaches
  `window_max_rows`, its parts are combined into the sealed Parquet file the Dagster sensor reads
  (`windows.sealed_window_path`, atomic), and then the parts are removed. A crash between the two
  is repaired on start: a sealed file means the seal completed, so leftover parts are deleted.
* Bounded memory: with ReceiveMaximum QoS 1 messages unacknowledged the loop reads nothing more
  from the socket (the broker keeps the rest), whatever the broker does (`_network_step`).
* A write that fails (disk full, quota, I/O error) pauses the collector instead of ending it: the
  batch stays in memory unacknowledged, received messages wait unhandled (QoS 0 ones past
  ReceiveMaximum of them are dropped and counted), one ERROR names the file and the free space,
  `stats.paused` / `stats.disk_full` say so, and the failed step is retried with backoff until it
  works. Only the steps not yet done are redone, and failed writes leave no temporary file, so
  nothing half-written is ever read. Nothing unwritten was acknowledged, so a kill loses nothing.
* Rejected input is bounded (`DeadLetterBudget`): dead-letter lines per topic and minute, and
  bytes of rejected payloads per topic and hour, so a flood of bad or huge messages cannot fill
  the disk; what goes over is counted, not stored.
* Storage elsewhere (`FACTORY_STORAGE_URL`: object storage, another mount): windows are still sealed
  on local disk as above, and a `WindowPublisher` thread then puts each into the store, where the
  platform sees it only once complete; a store that does not answer delays windows, never loses
  them (`sensors/window_publisher.py`).
* Retiring a member of the shared subscription for good (`--shared --retire`, `Collector(retire=True)`):
  Mosquitto never hands a member's share to the others, so a member that is simply stopped leaves
  its persistent session holding its in-flight messages and collecting a share of every new one
  until it expires (tests/test_collector_shared_failover.py). A retiring run takes the member's
  place (same id, same data dir, recovered like any start), connects to the same session and
  UNSUBSCRIBES from the group instead of subscribing, collects and acknowledges what the session
  still holds, then seals and disconnects with Session Expiry Interval 0, ending the session.
  Measured with raw paho clients on Mosquitto 2.0.11, two members, one killed (its session holding
  10 in-flight and 100, or 10,000, queued messages), the other live:
  - messages queued in the session are still delivered after the UNSUBSCRIBE: with a
    ReceiveMaximum of 10, 10 arrived before the UNSUBACK and the other 100 after it (with 1000:
    1000 before, 9011 after), the in-flight ones first, flagged DUP; nothing was missing;
  - once the UNSUBACK is back no new message goes to the session: of 100 published after it the
    live member got 100, the retiring client 0;
  - the session's queue is first in, first out: a QoS 1 marker the retiring client publishes to a
    topic of its own, subscribed after the UNSUBSCRIBE, arrived after the last queued message
    (position 110 of 111, and 10,010 of 10,011), so it marks the session as drained;
  - DISCONNECT with Session Expiry Interval 0 ends the session: a client reconnecting with the
    same id and clean start off found no session (session present: False) and nothing arrived,
    and all of 100 messages published afterwards went to the live member;
  - ending the session before it is drained loses what it holds, it is not redistributed: with
    10 in flight and 100 queued, a DISCONNECT with expiry 0 right after reconnecting gave the live
    member none of them. Hence drain first, and end the session only then.
  So a retiring run ends once its session is drained: UNSUBACK received, its marker received, no
  message received for `retire_quiet_s`, nothing unacknowledged or unwritten, the open window
  sealed. If the marker never comes (a broker ACL refusing its topic), a longer quiet period
  (`_RETIRE_QUIET_WITHOUT_MARKER_S`) stands in for it. Stopped before that (SIGTERM), it stops like
  any collector and keeps the session, now out of the group, for another `--retire` run. Nothing of
  this touches the normal path but one check per loop turn (not per message).

On-disk layout (all under `settings.windows_dir` / `settings.dead_letter_dir`):

    open/{key}/part-000001.arrow      one Arrow IPC file (WINDOW_SCHEMA) per group commit
    open/.{collector_id}.lock         flock held while a collector with that id runs
    sealed/{YYYYMMDD}/{key}.parquet   the sealed window (windows.py contract)
    published/{YYYYMMDD}/{key}        marker: this sealed window is in the store (only with FACTORY_STORAGE_URL)
    dead-letter/{YYYYMMDD}-{collector_id}.jsonl   one JSON line per rejected message
    dead-letter/blobs/{sha256}.bin    full bytes of payloads larger than max_payload_bytes (within budget)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as paho
import polars as pl
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from factory_pipelines import mqtt
from factory_pipelines.durable_files import (
    append_durable,
    fsync_dir,
    write_atomic,
    write_bytes_atomic,
    write_parquet_atomic,
)
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.telemetry import (
    COLLECTOR_SUBSCRIPTIONS,
    PayloadError,
    accept_telemetry,
    parse_telemetry_topic,
)
from factory_pipelines.windows import (
    WINDOW_SCHEMA,
    WindowKeyError,
    aligned_window_start,
    iter_sealed_keys,
    parse_window_key,
    sealed_dir,
    sealed_window_path,
    window_key,
    window_start,
)
from sensors.dedup_index import DedupIndex
from sensors.window_publisher import WindowPublisher

log = logging.getLogger("sensors.collector")  # not __name__: it is "__main__" under python -m


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


MALLOC_TRIM = _glibc_malloc_trim()
"""glibc keeps what a seal freed (the window's frames) in its heaps. Handed back after each seal, the
collector's RSS stayed within 236-244 MB over the soak's last 20 minutes, without the steps of
several MB seen before (benchmarks/results/soak.md)."""

SHARED_GROUP = "collectors"
# Unacknowledged QoS 1 messages the broker may have in flight to us (MQTT v5 ReceiveMaximum).
DEFAULT_RECEIVE_MAXIMUM = 1000
DEFAULT_DEDUP_HORIZON_MINUTES = 10.0
DEFAULT_DEDUP_MAX_ENTRIES = 4_000_000  # frozen pairs take 16 bytes each (dedup_index.py): 64 MB at most
PART_SUFFIX = ".arrow"
DEAD_LETTER_TOPIC_CHARS = 512  # a topic may be 64 KiB: a dead-letter line keeps its start
DEAD_LETTER_REASON_CHARS = 1000
_INT64_MAX = 2**63 - 1
_TOPIC_CACHE_SIZE = 100_000
_READ_BURST = 256  # packets read per select() before the loop checks its flush and seal deadlines
_LOOP_TICK_S = 0.1  # longest the loop sleeps in select(); bounds how late a stop request is noticed
_MAX_RECONNECT_DELAY_S = 10.0
_STALE_BLOB_TEMP_S = 3600.0
_RETRY_FIRST_S = 0.2  # first retry of a failed write; doubles up to _RETRY_MAX_S
_RETRY_MAX_S = 5.0
_STILL_PAUSED_REPORT_S = 60.0
_FLUSH_AT_HELD_BYTES = 8 * 1024 * 1024  # rejected payloads waiting for their blob files: flush early
_MAX_TRACKED_TOPICS = 10_000  # dead-letter accounts per period; further topics share one
_ACCOUNT_KEY_CHARS = 256  # topics are accounted by their first 256 characters
_US_PER_MINUTE = 60_000_000
_US_PER_HOUR = 3_600_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Retiring (--retire): the marker that follows the session's queue, and the quiet periods that end it.
RETIRE_MARKER_TOPIC = "collectors/retire/{collector_id}"  # outside factory/# and cleanroom/#: no member takes it
DEFAULT_RETIRE_QUIET_S = 1.0  # nothing received for this long after the marker: drained
_RETIRE_QUIET_WITHOUT_MARKER_S = 10.0  # the marker never came (ACL?): drained after this long quiet
_ONE_US = timedelta(microseconds=1)


def _to_us(moment: datetime) -> int:
    """Exact microseconds since the epoch (float timestamps would round)."""
    return (moment - _EPOCH) // _ONE_US


def _from_us(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _now_us() -> int:
    return time.time_ns() // 1000


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


@dataclass
class CollectorStats:
    """Counters since this collector started; `Collector.stats` hands out a copy."""

    received: int = 0  # messages the broker handed us, redeliveries included
    rows_written: int = 0  # rows made durable in part files
    acked: int = 0  # PUBACKs sent (QoS 1 only)
    duplicates_dropped: int = 0  # (asset_id, seq) already written
    dead_letters: int = 0
    ignored: int = 0  # topics that carry no telemetry (cmd, alerts)
    without_seq: int = 0  # accepted at least once: no seq to dedup on
    flushes: int = 0
    parts_written: int = 0
    windows_sealed: int = 0
    rows_sealed: int = 0
    recovered_parts: int = 0  # part files found on start and kept
    recovered_windows: int = 0  # open windows found on start (kept, sealed, or already sealed)
    dedup_keys_loaded: int = 0  # (asset_id, seq) pairs read back from disk on start
    connections: int = 0
    last_sealed_key: str | None = None
    max_unacked: int = 0  # most QoS 1 messages held unacknowledged at once (the broker caps it: ReceiveMaximum)
    paused: bool = False  # writes fail (disk full, I/O error): nothing more is acknowledged until they work
    disk_full: bool = False  # ...and the last failure was ENOSPC or EDQUOT
    pause_reason: str | None = None  # the last write failure, with its file
    pauses: int = 0  # times writes started failing
    write_failures: int = 0  # failed write attempts, retries included
    dropped_while_paused: int = 0  # QoS 0 messages dropped while paused, past the in-memory bound
    dead_letters_counted_only: int = 0  # over the dead-letter line limits: in a counter line, not a line each
    dead_letter_payloads_dropped: int = 0  # over the payload budget: line kept (size, sha256), bytes not
    dead_letter_payload_bytes_dropped: int = 0
    windows_published: int = 0  # sealed windows put into the store (only when FACTORY_STORAGE_URL points elsewhere)
    windows_awaiting_store: int = 0  # sealed on local disk, not yet in the store
    store_unreachable: bool = False  # the last attempt to publish failed: windows wait on local disk, retried
    store_error: str | None = None  # the last failure to publish
    session_present: bool | None = None  # the broker still held this id's session at the last connect
    retired: bool = False  # --retire: the session was drained, everything sealed, and the session ended


@dataclass
class _Counted:
    """Rejected messages of one topic in one minute that got no line of their own."""

    count: int = 0
    size: int = 0
    first_us: int = 0
    last_us: int = 0


class DeadLetterBudget:
    """How much rejected input the collector agrees to store, so that a flood cannot fill the disk.

    Lines: at most `lines_per_topic_minute` per topic and `lines_per_minute` in all, per UTC minute;
    the rest of that minute is only counted, and written as one counter line per topic once the
    minute is over (or at a clean stop). Payload bytes, inline in a line or in a blob file: at most
    `payload_bytes_per_topic_hour` per topic and `payload_bytes_per_hour` in all, per UTC hour;
    beyond that a line keeps the size and sha256 but not the bytes. Topics past `max_topics` in one
    period share one account, so the accounts stay bounded in memory too. The counts of the current
    minute live in memory: a crash loses them (not the messages' lines, which were never written).
    """

    OTHER_TOPICS = "(other topics)"

    def __init__(
        self,
        *,
        lines_per_topic_minute: int,
        lines_per_minute: int,
        payload_bytes_per_topic_hour: int,
        payload_bytes_per_hour: int,
        max_topics: int = _MAX_TRACKED_TOPICS,
    ) -> None:
        self.lines_per_topic_minute = lines_per_topic_minute
        self.lines_per_minute = lines_per_minute
        self.payload_bytes_per_topic_hour = payload_bytes_per_topic_hour
        self.payload_bytes_per_hour = payload_bytes_per_hour
        self.max_topics = max_topics
        self._minute = -1
        self._lines: dict[str, int] = {}
        self._lines_total = 0
        self._counted: dict[str, _Counted] = {}
        self._closed: list[tuple[int, dict[str, _Counted]]] = []  # minutes over, counts not yet written
        self._hour = -1
        self._payload: dict[str, int] = {}
        self._payload_total = 0

    def _account(self, accounts: dict[str, Any], topic: str) -> str:
        key = topic[:_ACCOUNT_KEY_CHARS]
        return key if key in accounts or len(accounts) < self.max_topics else self.OTHER_TOPICS

    def admit_line(self, topic: str, size: int, received_us: int) -> bool:
        """True: write this message's own line; False: it is only counted."""
        minute = received_us // _US_PER_MINUTE
        if minute != self._minute:
            self._close_minute()
            self._minute = minute
        key = self._account(self._lines, topic)
        used = self._lines.get(key, 0)
        if used < self.lines_per_topic_minute and self._lines_total < self.lines_per_minute:
            self._lines[key] = used + 1
            self._lines_total += 1
            return True
        key = self._account(self._counted, topic)
        counted = self._counted.get(key)
        if counted is None:
            counted = self._counted[key] = _Counted(first_us=received_us)
        counted.count += 1
        counted.size += size
        counted.last_us = received_us
        return False

    def admit_payload(self, topic: str, size: int, received_us: int) -> bool:
        """True: store this rejected payload's bytes (its size counts against the budgets from now)."""
        hour = received_us // _US_PER_HOUR
        if hour != self._hour:
            self._hour = hour
            self._payload = {}
            self._payload_total = 0
        key = self._account(self._payload, topic)
        used = self._payload.get(key, 0)
        if used + size > self.payload_bytes_per_topic_hour or self._payload_total + size > self.payload_bytes_per_hour:
            return False
        self._payload[key] = used + size
        self._payload_total += size
        return True

    def _close_minute(self) -> None:
        if self._counted:
            self._closed.append((self._minute, self._counted))
        self._counted = {}
        self._lines = {}
        self._lines_total = 0

    def counter_lines_due(self, now_us: int) -> bool:
        return bool(self._closed) or (bool(self._counted) and now_us // _US_PER_MINUTE != self._minute)

    def take_counter_lines(self, now_us: int, *, final: bool = False) -> list[tuple[int, str, _Counted]]:
        """(minute, topic, counts) of every minute that is over, or of all of them when `final`."""
        if final or now_us // _US_PER_MINUTE != self._minute:
            self._close_minute()
        closed, self._closed = self._closed, []
        return [(minute, topic, counted) for minute, accounts in closed for topic, counted in accounts.items()]


class DeadLetterFile:
    """Rejected messages, one JSON line each, one file per UTC day and collector.

    Lines are appended and fsynced in the group commit before the batch is acknowledged. A crash
    mid-append leaves a torn last line; `repair` cuts it on start (its message was not acknowledged
    and comes again). Dead letters are therefore at least once, like messages without seq. A
    failed append (disk full) is cut back at once, so a retry never glues onto half a line.
    """

    def __init__(self, directory: Path, collector_id: str) -> None:
        self.directory = directory
        self.collector_id = collector_id
        self.blobs_dir = directory / "blobs"

    def path_for(self, moment: datetime) -> Path:
        return self.directory / f"{moment:%Y%m%d}-{self.collector_id}.jsonl"

    def my_files(self) -> list[Path]:
        return sorted(self.directory.glob(f"*-{self.collector_id}.jsonl"))

    def record(
        self, *, received_at: datetime, topic: str, reason: str, raw: bytes, max_inline: int, keep_payload: bool
    ) -> tuple[dict[str, Any], bytes | None]:
        """The dead-letter line for one message, and the bytes for its blob file when too large to inline.

        Without `keep_payload` (over the budget) the line keeps only the payload's size and sha256.
        """
        entry: dict[str, Any] = {
            "received_at": received_at.isoformat(),
            "collector_id": self.collector_id,
            "topic": _clip(topic, DEAD_LETTER_TOPIC_CHARS),
            "reason": _clip(reason, DEAD_LETTER_REASON_CHARS),
            "size": len(raw),
        }
        if len(topic) > DEAD_LETTER_TOPIC_CHARS:
            entry["topic_chars"] = len(topic)
        if not keep_payload:
            entry["sha256"] = hashlib.sha256(raw).hexdigest()
            entry["payload_dropped"] = "over the dead-letter payload budget"
            return entry, None
        if len(raw) > max_inline:
            entry["sha256"] = hashlib.sha256(raw).hexdigest()
            entry["payload_file"] = f"blobs/{entry['sha256']}.bin"
            return entry, raw
        try:
            entry["payload"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            entry["payload_base64"] = base64.b64encode(raw).decode("ascii")
        return entry, None

    def counter_entry(self, minute: int, topic: str, counted: _Counted, budget: DeadLetterBudget) -> dict[str, Any]:
        """The one line standing for a topic's rejected messages of one minute that were only counted."""
        return {
            "received_at": _from_us(minute * _US_PER_MINUTE).isoformat(),
            "collector_id": self.collector_id,
            "topic": _clip(topic, DEAD_LETTER_TOPIC_CHARS),
            "reason": (
                f"dead-letter line limit reached ({budget.lines_per_topic_minute} per topic, "
                f"{budget.lines_per_minute} in all, per minute): {counted.count} rejected messages only counted"
            ),
            "counted_only": counted.count,
            "size": counted.size,
            "first_received_at": _from_us(counted.first_us).isoformat(),
            "last_received_at": _from_us(counted.last_us).isoformat(),
        }

    def append(self, entries: list[tuple[datetime, dict[str, Any]]], blobs: dict[str, bytes]) -> None:
        """Blob files first (durable before the lines that point at them), then the lines, fsynced."""
        for digest, raw in blobs.items():
            blob = self.blobs_dir / f"{digest}.bin"
            if not blob.exists():
                write_bytes_atomic(blob, raw)
        by_path: dict[Path, list[bytes]] = {}
        for moment, entry in entries:
            line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
            # backslashreplace: a lone surrogate in a reason becomes its JSON escape, not an encode error
            by_path.setdefault(self.path_for(moment), []).append(line.encode("utf-8", "backslashreplace"))
        self.directory.mkdir(parents=True, exist_ok=True)
        for path, lines in by_path.items():
            append_durable(path, b"".join(lines))

    def repair(self) -> None:
        """Cut a torn last line left by a crash mid-append; stale blob temp files go too."""
        for path in self.my_files()[-2:]:
            size = path.stat().st_size
            if size == 0:
                continue
            with path.open("r+b") as handle:
                handle.seek(size - 1)
                if handle.read(1) == b"\n":
                    continue
                tail_start = max(0, size - 1_048_576)
                while True:
                    handle.seek(tail_start)
                    cut = handle.read(size - tail_start).rfind(b"\n")
                    if cut >= 0 or tail_start == 0:
                        break
                    tail_start = max(0, tail_start - 1_048_576)
                keep = tail_start + cut + 1 if cut >= 0 else 0
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())
            log.warning("dead-letter file %s: cut a torn last line (%d bytes)", path, size - keep)
        if self.blobs_dir.is_dir():
            cutoff = time.time() - _STALE_BLOB_TEMP_S
            for temp in self.blobs_dir.glob(".*.tmp"):
                if temp.stat().st_mtime < cutoff:
                    temp.unlink(missing_ok=True)


@dataclass
class _Batch:
    """Messages received since the last group commit: not yet durable, not yet acknowledged."""

    asset_id: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    site: list[str] = field(default_factory=list)
    topic: list[str] = field(default_factory=list)
    ts_us: list[int] = field(default_factory=list)
    received_us: list[int] = field(default_factory=list)
    seq: list[int | None] = field(default_factory=list)
    payload: list[str] = field(default_factory=list)
    dead_letters: list[tuple[datetime, dict[str, Any]]] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)  # rejected payloads for blob files, by sha256
    held_bytes: int = 0  # bytes in `blobs`: when they pile up the batch is flushed early
    acks: list[tuple[int, int, int]] = field(default_factory=list)  # (connection generation, mid, qos)
    messages: int = 0
    first_at: float = 0.0  # time.monotonic() of the oldest message in the batch

    @property
    def rows(self) -> int:
        return len(self.asset_id)

    def clear_rows(self) -> None:
        """The rows are in a part file now; the rest of the batch may still wait for its writes."""
        for column in (self.asset_id, self.kind, self.site, self.topic, self.ts_us, self.received_us, self.seq):
            column.clear()
        self.payload.clear()

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "asset_id": self.asset_id,
                "kind": self.kind,
                "site": self.site,
                "topic": self.topic,
                "ts": pl.Series(self.ts_us, dtype=pl.Int64).cast(WINDOW_SCHEMA["ts"]),
                "received_at": pl.Series(self.received_us, dtype=pl.Int64).cast(WINDOW_SCHEMA["received_at"]),
                "seq": pl.Series(self.seq, dtype=pl.Int64),
                "payload": self.payload,
            },
            schema=WINDOW_SCHEMA,
        )


@dataclass
class _Retirement:
    """Where a retiring run (`Collector(retire=True)`) stands on the current connection."""

    quiet_s: float
    marker_topic: str
    unsubscribed: bool = False  # UNSUBACK for the group's topics: nothing new is routed to the session
    marker_subscribed: bool = False  # SUBACK for the marker topic
    marker: bytes | None = None  # payload of the marker published on this connection
    marker_seen: bool = False  # it came back: everything queued before it has been received
    quiet_since: float = 0.0  # time.monotonic() of the last sign of activity
    seen_received: int = -1  # stats.received + inbox at the last check
    cannot: str | None = None  # why this broker cannot retire a session (MQTT 3.1.1)

    def reset(self) -> None:
        """A new connection: unsubscribe, subscribe and mark again."""
        self.unsubscribed = self.marker_subscribed = self.marker_seen = False
        self.marker = None
        self.quiet_since = time.monotonic()


@dataclass
class _OpenWindow:
    """The window receiving rows now; its durable rows are the part files in `directory`."""

    key: str
    start_us: int
    end_us: int
    directory: Path
    rows: int = 0  # durable rows (in part files)
    next_part_file: int = 1
    directory_made: bool = False  # made durably (with the parent's fsync) by the first flush


class _Inbound(NamedTuple):
    """What the loop keeps of a received message until it is handled.

    Not the paho message itself: that drags about 30 objects each (properties, a condition, its
    lock), which outlive the read burst, get promoted and make the cyclic GC walk the whole heap
    over and over (a third of the collector's time before this, `benchmarks/ingest.py`). A tuple of
    atomic values is untracked by the GC.
    """

    received_us: int
    topic: str | bytes  # bytes only when the topic is not UTF-8 (dead-lettered)
    payload: bytes
    qos: int
    mid: int


class Collector:
    """Subscribes to all telemetry and turns it into sealed window files (see the module docstring)."""

    def __init__(
        self,
        settings: FactorySettings,
        *,
        shared: bool = False,
        retire: bool = False,
        retire_quiet_s: float = DEFAULT_RETIRE_QUIET_S,
        receive_maximum: int = DEFAULT_RECEIVE_MAXIMUM,
        session_expiry_s: int = mqtt.PERSISTENT_SESSION_EXPIRY_S,
        dedup_horizon_minutes: float = DEFAULT_DEDUP_HORIZON_MINUTES,
        dedup_max_entries: int = DEFAULT_DEDUP_MAX_ENTRIES,
    ) -> None:
        window_key(_EPOCH, settings.collector_id)  # fail early on a collector id unfit for window keys
        if retire and not shared:
            raise ValueError("retiring is for a member of the shared subscription: retire=True needs shared=True")
        self.settings = settings
        self.shared = shared
        self.retire = retire
        self.receive_maximum = receive_maximum
        self.session_expiry_s = session_expiry_s
        # Flush at half the in-flight limit, so the broker keeps sending while we write.
        self.flush_at_messages = max(1, receive_maximum // 2)
        self.flush_after_s = settings.collector_flush_ms / 1000
        self.client_id = f"factory-{settings.collector_id}"
        self.windows_dir = settings.windows_dir
        self.open_root = self.windows_dir / "open"
        self.dedup_horizon_s = max(dedup_horizon_minutes * 60, 3 * settings.window_seconds)
        self._window_us = int(settings.window_seconds * 1_000_000)
        self._dedup = DedupIndex(self.dedup_horizon_s, dedup_max_entries)
        self._dead_letters = DeadLetterFile(settings.dead_letter_dir, settings.collector_id)
        self._dead_letter_budget = DeadLetterBudget(
            lines_per_topic_minute=settings.dead_letter_lines_per_topic_minute,
            lines_per_minute=settings.dead_letter_lines_per_minute,
            payload_bytes_per_topic_hour=settings.dead_letter_payload_bytes_per_topic_hour,
            payload_bytes_per_hour=settings.dead_letter_payload_bytes_per_hour,
        )
        self._stats = CollectorStats()
        self._batch = _Batch()
        self._open: _OpenWindow | None = None
        self._inbox: deque[_Inbound] = deque()
        self._unacked = 0  # QoS 1 messages of this connection received and not yet acknowledged
        self._retry_delay = _RETRY_FIRST_S
        self._retry_at = 0.0  # time.monotonic() of the next retry of a failed write, while paused
        self._paused_since = 0.0
        self._last_pause_report = 0.0
        self._site_by_topic: dict[str, str] = {}
        self._client: mqtt.GulpReadingClient | None = None
        self._generation = 0  # bumps on every CONNACK; an ack is only valid on its own connection
        self._connected = False
        self._subscribed = threading.Event()
        self._window_duplicates = 0
        self._window_dead_letters = 0
        self._running = False
        self._publisher = WindowPublisher.for_settings(settings, keep_seconds=self.dedup_horizon_s)
        self._retirement = (
            _Retirement(retire_quiet_s, RETIRE_MARKER_TOPIC.format(collector_id=settings.collector_id))
            if retire
            else None
        )

    # ---- public ----

    @property
    def stats(self) -> CollectorStats:
        """A snapshot of the counters (safe to read from another thread)."""
        stats = dataclasses.replace(self._stats)
        if self._publisher is not None:
            published = self._publisher.stats
            stats.windows_published = published.published
            stats.windows_awaiting_store = published.waiting
            stats.store_unreachable = published.store_unreachable
            stats.store_error = published.last_error
        return stats

    @property
    def subscribed(self) -> threading.Event:
        """Set once the broker has granted the subscriptions of the current connection."""
        return self._subscribed

    @property
    def subscriptions(self) -> list[str]:
        if self.shared:
            return [f"$share/{SHARED_GROUP}/{topic}" for topic in COLLECTOR_SUBSCRIPTIONS]
        return list(COLLECTOR_SUBSCRIPTIONS)

    def run(self, stop: threading.Event | None = None) -> CollectorStats:
        """Collect until `stop` is set; then flush, acknowledge, seal the open window and disconnect."""
        if self._running:
            raise RuntimeError("this Collector is already running")
        self._running = True
        stop = stop or threading.Event()
        try:
            with self._exclusive():
                if self._recover_until_done(stop):
                    if self._publisher is not None:
                        self._publisher.start()  # first the windows an earlier run sealed and did not publish
                    try:
                        client = self._make_client()
                        self._client = client
                        drained = self._connect(stop) and self._collect(client, stop)
                        self._shutdown(client, end_session=drained)
                    finally:
                        if self._publisher is not None:
                            self._publisher.stop()
        finally:
            self._running = False
        log.info("collector %s stopped: %s", self.settings.collector_id, self.stats)
        if self.retire:
            self._report_retirement()
        return self.stats

    def _report_retirement(self) -> None:
        stats = self.stats
        collector_id = self.settings.collector_id
        if not stats.retired:
            log.error(
                "collector %s is NOT retired: %s. Its session (if any) is kept; run --retire again",
                collector_id,
                self._retirement.cannot
                if self._retirement and self._retirement.cannot
                else "stopped before it was drained",
            )
            return
        log.info(
            "retired collector %s: drained %d messages from its session (%d rows written, %d duplicates dropped, "
            "%d dead letters), %d windows sealed; the broker session is ended",
            collector_id,
            stats.received,
            stats.rows_written,
            stats.duplicates_dropped,
            stats.dead_letters,
            stats.windows_sealed,
        )

    # ---- recovery ----

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold a lock on this collector id's state: a second instance would interleave parts and acks.

        flock is released by the kernel when the process dies, so a SIGKILL never leaves it stale.
        """
        self.open_root.mkdir(parents=True, exist_ok=True)
        with (self.open_root / f".{self.settings.collector_id}.lock").open("a") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(
                    f"collector {self.settings.collector_id!r} is already running on {self.windows_dir}; "
                    "give each collector its own FACTORY_COLLECTOR_ID"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _recover_until_done(self, stop: threading.Event) -> bool:
        """Start-up recovery, retried with backoff while writes fail: a full disk must not crash-loop us.

        Recovery only looks at what is on disk, so running it again after a failure is safe.
        False when `stop` was set first.
        """
        while True:
            try:
                self._recover()
            except OSError as exc:
                self._write_failed(exc)
                if stop.wait(self._retry_delay):
                    return False
                continue
            if self._stats.paused:
                self._resume()
            return True

    def _recover(self) -> None:
        """Make the disk consistent after a crash and rebuild the dedup index (runs at start)."""
        log.info("recovering the windows of collector %s under %s", self.settings.collector_id, self.open_root)
        self._open = None
        self._stats.recovered_windows = 0
        self._stats.recovered_parts = 0
        self.open_root.mkdir(parents=True, exist_ok=True)
        self._dead_letters.directory.mkdir(parents=True, exist_ok=True)
        self._dead_letters.repair()
        recovered: list[tuple[str, list[Path]]] = []
        for directory in sorted(p for p in self.open_root.iterdir() if p.is_dir()):
            if not self._is_mine(directory.name):
                continue
            for temp in directory.glob(".*.tmp"):
                temp.unlink()
            parts = sorted(directory.glob(f"part-*{PART_SUFFIX}"))
            self._stats.recovered_windows += 1
            if sealed_window_path(self.windows_dir, directory.name).exists():
                log.info(
                    "window %s was sealed before the crash: removing %d leftover parts", directory.name, len(parts)
                )
                self._remove_parts(directory, parts)
            elif not parts:
                self._remove_parts(directory, parts)
            else:
                recovered.append((directory.name, parts))
        self._remove_stale_seal_temps([key for key, _ in recovered])
        self._rebuild_dedup_index(recovered)
        now_us = _now_us()
        for index, (key, parts) in enumerate(recovered):
            start_us = _to_us(window_start(key))
            rows = sum(pl.scan_ipc(part).select(pl.len()).collect().item() for part in parts)
            self._stats.recovered_parts += len(parts)
            self._open = _OpenWindow(
                key=key,
                start_us=start_us,
                end_us=start_us + self._window_us,
                directory=self.open_root / key,
                rows=rows,
                next_part_file=int(parts[-1].stem.removeprefix("part-")) + 1,
                directory_made=True,
            )
            is_latest = index == len(recovered) - 1
            if is_latest and now_us < self._open.end_us and rows < self.settings.window_max_rows:
                log.info("recovered open window %s: %d rows in %d parts", key, rows, len(parts))
            else:
                log.info("recovered window %s (%d rows): its interval is over, sealing it", key, rows)
                self._seal_open()

    def _is_mine(self, key: str) -> bool:
        try:
            return parse_window_key(key)[1] == self.settings.collector_id
        except WindowKeyError:
            return False

    def _remove_stale_seal_temps(self, recovered_keys: list[str]) -> None:
        """Temp files of a seal interrupted by a crash (only this collector's)."""
        days = {f"{datetime.now(UTC) - timedelta(days=back):%Y%m%d}" for back in (0, 1)}
        days.update(key[:8] for key in recovered_keys)
        for day in days:
            for temp in (sealed_dir(self.windows_dir) / day).glob(".*.parquet.*.tmp"):
                if self._is_mine(temp.name[1:].split(".parquet.")[0]):
                    temp.unlink(missing_ok=True)

    def _my_latest_sealed_key(self) -> str | None:
        root = sealed_dir(self.windows_dir)
        if not root.is_dir():
            return None
        for day in sorted((p for p in root.iterdir() if p.is_dir()), reverse=True):
            keys = sorted(
                (p.stem for p in day.glob(f"*-{self.settings.collector_id}-*.parquet") if self._is_mine(p.stem)),
                reverse=True,
            )
            if keys:
                return keys[0]
        return None

    def _rebuild_dedup_index(self, recovered: list[tuple[str, list[Path]]]) -> None:
        """Read back (asset_id, seq) of recent sealed windows and open parts, anchored at our last activity.

        The horizon is measured back from our newest window, not from now, and the keys count as
        seen now, so a collector that was down for longer than the horizon still recognises the
        redeliveries of its last batch.
        """
        latest = [key for key, _ in recovered[-1:]]
        sealed_latest = self._my_latest_sealed_key()
        if sealed_latest is not None:
            latest.append(sealed_latest)
        if not latest:
            return
        anchor = max(window_start(key) for key in latest)
        since = anchor - timedelta(seconds=self.dedup_horizon_s)
        sources: list[Path] = [
            sealed_window_path(self.windows_dir, key)
            for key in iter_sealed_keys(self.windows_dir, since=since)
            if self._is_mine(key)
        ]
        loaded, loaded_at_us = 0, _now_us()
        columns = ["asset_id", "seq", "ts", "received_at"]
        for source in sources:
            frame = pl.read_parquet(source, columns=columns)
            loaded += self._index_frame(frame, loaded_at_us)
        for _, parts in recovered:
            for part in parts:
                loaded += self._index_frame(pl.read_ipc(part, columns=columns), loaded_at_us)
        self._stats.dedup_keys_loaded = loaded
        log.info(
            "dedup index rebuilt from %d sealed windows and %d open ones: %d keys", len(sources), len(recovered), loaded
        )

    def _index_frame(self, frame: pl.DataFrame, loaded_at_us: int) -> int:
        """Index rows read back from disk as if received now: their redeliveries arrive from now on."""
        rows = frame.filter(pl.col("seq").is_not_null()).select(
            "asset_id",
            "seq",
            pl.col("ts").dt.epoch("us"),
            pl.col("received_at").dt.epoch("us"),
        )
        for asset_id, seq, ts_us, received_us in rows.iter_rows():
            self._dedup.add(asset_id, seq, None if ts_us == received_us else ts_us, loaded_at_us)
        return rows.height

    # ---- MQTT ----

    def _make_client(self) -> mqtt.GulpReadingClient:
        client = mqtt.make_client(self.client_id, manual_ack=True, client_class=mqtt.GulpReadingClient)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        if self._retirement is not None:
            client.on_subscribe = self._on_marker_subscribe
            client.on_unsubscribe = self._on_unsubscribe
            client.message_callback_add(self._retirement.marker_topic, self._on_marker)
        return client

    def _connect(self, stop: threading.Event) -> bool:
        """Connect with backoff until it works or `stop` is set; False when stopped first."""
        delay = 0.5
        while not stop.is_set():
            try:
                mqtt.connect(
                    self._client_or_fail(),
                    self.settings.mqtt_connection,
                    clean_start=False,
                    session_expiry_s=self.session_expiry_s,
                    receive_maximum=self.receive_maximum,
                )
                return True
            except OSError as exc:
                log.warning(
                    "cannot connect to the broker at %s (%s); retrying in %.1f s", self.settings.mqtt_url, exc, delay
                )
                stop.wait(delay)
                delay = min(delay * 2, _MAX_RECONNECT_DELAY_S)
        return False

    def _client_or_fail(self) -> paho.Client:
        if self._client is None:
            raise RuntimeError("no MQTT client")
        return self._client

    def _on_connect(
        self, client: paho.Client, _userdata: object, flags: Any, reason: ReasonCode, _props: object
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        self._generation += 1
        self._unacked = 0  # the broker resends what this connection's predecessor left unacknowledged
        if self._inbox:  # so drop its QoS 1 messages we have not handled yet (only while paused are there any)
            self._inbox = deque(inbound for inbound in self._inbox if inbound.qos == 0)
        self._connected = True
        self._stats.connections += 1
        log.info(
            "connected to %s as %s (MQTT %s, session present: %s)",
            self.settings.mqtt_url,
            self.client_id,
            "v5" if client.protocol == mqtt.MQTTv5 else "3.1.1",
            getattr(flags, "session_present", None),
        )
        self._stats.session_present = getattr(flags, "session_present", None)
        if self._retirement is not None:
            self._start_retiring(client)
            return
        if client.protocol == mqtt.MQTTv5:
            # Retained messages are stale copies, not new measurements: don't replay them on subscribe.
            options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            client.subscribe([(topic, options) for topic in self.subscriptions])
        else:
            if self.shared:
                log.error("shared subscriptions need MQTT v5; this broker speaks 3.1.1 only")
            client.subscribe([(topic, 1) for topic in self.subscriptions])

    def _on_subscribe(
        self, _client: paho.Client, _userdata: object, _mid: int, reasons: list[ReasonCode], _props: object
    ) -> None:
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused:
            log.error("broker refused subscriptions %s: %s", self.subscriptions, refused)
            return
        log.info("subscribed to %s", ", ".join(self.subscriptions))
        self._subscribed.set()

    # ---- retiring (--retire): drain the session, then end it ----

    def _start_retiring(self, client: paho.Client) -> None:
        """Leave the group (nothing new is routed to the session) and subscribe to the marker's topic."""
        retirement = self._retirement
        assert retirement is not None
        retirement.reset()
        if client.protocol != mqtt.MQTTv5:
            retirement.cannot = "the broker speaks MQTT 3.1.1 only: no shared subscription, no session expiry to end"
            return
        log.info(
            "retiring collector %s: unsubscribing from %s, collecting what its session still holds",
            self.settings.collector_id,
            ", ".join(self.subscriptions),
        )
        client.unsubscribe(self.subscriptions)
        client.subscribe([(retirement.marker_topic, SubscribeOptions(qos=1))])

    def _on_unsubscribe(
        self, _client: paho.Client, _userdata: object, _mid: int, reasons: list[ReasonCode], _props: object
    ) -> None:
        # "No subscription existed" (0x11) is fine: a session that is gone, or an earlier --retire run.
        log.info("unsubscribed from %s: %s", ", ".join(self.subscriptions), ", ".join(str(r) for r in reasons))
        if self._retirement is not None:
            self._retirement.unsubscribed = True
            self._retirement.quiet_since = time.monotonic()

    def _on_marker_subscribe(
        self, _client: paho.Client, _userdata: object, _mid: int, reasons: list[ReasonCode], _props: object
    ) -> None:
        retirement = self._retirement
        assert retirement is not None
        if any(reason.is_failure for reason in reasons):
            log.warning(
                "broker refused the marker topic %s (%s): the session counts as drained after %.0f s without a message",
                retirement.marker_topic,
                ", ".join(str(r) for r in reasons),
                _RETIRE_QUIET_WITHOUT_MARKER_S,
            )
            return
        retirement.marker_subscribed = True

    def _on_marker(self, client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        """The marker (or an old one from an interrupted run): acknowledged at once, it is no data."""
        if message.qos > 0:
            client.ack(message.mid, message.qos)
        retirement = self._retirement
        if retirement is not None and retirement.marker is not None and message.payload == retirement.marker:
            retirement.marker_seen = True
            log.info("marker received: everything the session held has come in")

    def _retirement_done(self, client: paho.Client) -> bool:
        """Once per loop turn while retiring: True once the session is drained and the open window sealed."""
        retirement = self._retirement
        assert retirement is not None
        if retirement.cannot is not None:
            return True
        if not self._connected or not retirement.unsubscribed:
            return False
        now = time.monotonic()
        if retirement.marker_subscribed and retirement.marker is None:
            # After the UNSUBACK: the marker is queued behind everything the group routed to the session.
            retirement.marker = f"{self.client_id} {uuid.uuid4().hex}".encode()
            client.publish(retirement.marker_topic, retirement.marker, qos=1)
        received = self._stats.received + len(self._inbox)
        if received != retirement.seen_received:
            retirement.seen_received = received
            retirement.quiet_since = now
        if self._stats.paused or self._inbox or self._batch.messages or self._unacked:
            return False
        quiet_for = (
            retirement.quiet_s if retirement.marker_seen else max(retirement.quiet_s, _RETIRE_QUIET_WITHOUT_MARKER_S)
        )
        if now - retirement.quiet_since < quiet_for:
            return False
        if not retirement.marker_seen:
            log.warning("no marker came back in %.0f s of quiet: counting the session as drained", quiet_for)
        return self._durably(lambda: self._write_counter_lines(final=True)) and self._durably(self._seal_open)

    def _on_disconnect(
        self, _client: paho.Client, _userdata: object, _flags: object, reason: object, _p: object
    ) -> None:
        self._connected = False
        self._subscribed.clear()
        log.info("disconnected from the broker: %s", reason)

    def _on_message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        if message.qos > 0:
            self._unacked += 1
            if self._unacked > self._stats.max_unacked:
                self._stats.max_unacked = self._unacked
        elif self._stats.paused and len(self._inbox) >= self.receive_maximum:
            # QoS 0 is at most once, and the broker does not hold it back for us: bounded memory comes first.
            self._stats.dropped_while_paused += 1
            return
        try:
            topic: str | bytes = message.topic
        except UnicodeDecodeError:
            topic = message._topic  # paho's own bytes: the only way to see what the sender sent
        self._inbox.append(_Inbound(_now_us(), topic, message.payload, message.qos, message.mid))

    # ---- the loop ----

    def _collect(self, client: mqtt.GulpReadingClient, stop: threading.Event) -> bool:
        """The loop, until `stop` is set (False) or, when retiring, the session is drained (True)."""
        reconnect_delay = 0.5
        retirement = self._retirement
        while not stop.is_set():
            rc = self._network_step(client, self._loop_timeout())
            self._drain_inbox()
            if rc != paho.MQTT_ERR_SUCCESS:
                # Data of the lost connection is made durable; its acks are void (mids belong to it).
                self._durably(self._flush_and_seal_by_time)
                log.warning("connection lost (%s); reconnecting in %.1f s", paho.error_string(rc), reconnect_delay)
                if stop.wait(reconnect_delay):
                    break
                try:
                    client.reconnect()
                    reconnect_delay = 0.5
                except OSError as exc:
                    log.warning("reconnect failed: %s", exc)
                    reconnect_delay = min(reconnect_delay * 2, _MAX_RECONNECT_DELAY_S)
                continue
            if self._stats.paused:
                self._retry_writes_if_due()
            else:
                self._durably(self._commit_if_due)
            if retirement is not None and self._retirement_done(client):
                return retirement.cannot is None
        return False

    def _network_step(self, client: mqtt.GulpReadingClient, timeout: float) -> paho.MQTTErrorCode:
        """One select() on the socket, then every packet it has ready (up to a burst), writes and keepalive.

        This is `client.loop(timeout)` taken apart (paho's documented external-loop API, same single
        thread): `loop()` reads one packet per select() and, once it has run, wakes itself through a
        socket pair on every PUBACK we queue; reading a burst per select() without the socket pair
        drained a backlog about 15 % faster here (benchmarks/ingest.py).

        With ReceiveMaximum QoS 1 messages unacknowledged it reads nothing more: Mosquitto 2.0.11
        sends past a v5 client's ReceiveMaximum once acknowledgements flow again after a stall
        (measured: 900 outstanding for 100), so the bound on what we hold is kept here, and what
        the broker sends meanwhile waits in the socket buffers.
        """
        sock = client.socket()
        if sock is None:
            return paho.MQTT_ERR_NO_CONN
        reading = self._unacked < self.receive_maximum
        in_hand = reading and client.buffered_bytes() > 0  # read ahead: select() cannot see these bytes
        try:
            readable, _, _ = select.select(
                [sock] if reading else [], [sock] if client.want_write() else [], [], 0.0 if in_hand else timeout
            )
        except (OSError, ValueError):
            return paho.MQTT_ERR_CONN_LOST
        if readable or in_hand:
            for _ in range(_READ_BURST):
                before = len(self._inbox)
                rc = client.loop_read()
                if rc != paho.MQTT_ERR_SUCCESS:
                    return rc
                if len(self._inbox) == before or self._unacked >= self.receive_maximum:
                    break  # no complete PUBLISH left in the socket buffer (or a SUBACK/PINGRESP), or at the bound
        if client.want_write():
            rc = client.loop_write()
            if rc != paho.MQTT_ERR_SUCCESS:
                return rc
        return client.loop_misc()

    def _loop_timeout(self) -> float:
        if self._stats.paused:  # deadlines of the batch and the window wait for the disk
            return max(0.0, min(_LOOP_TICK_S, self._retry_at - time.monotonic()))
        timeout = _LOOP_TICK_S
        if self._batch.messages:
            timeout = min(timeout, self._batch.first_at + self.flush_after_s - time.monotonic())
        if self._open is not None:
            timeout = min(timeout, (self._open.end_us - _now_us()) / 1_000_000)
        return max(0.0, timeout)

    def _drain_inbox(self) -> None:
        """Handle received messages in order; a failed write pauses, and the rest wait where they are.

        Only flushes and seals write, each before the message that needs it is taken from the inbox
        or after it is wholly in the batch, so a failure never leaves one message half handled.
        """
        inbox = self._inbox
        max_rows = self.settings.window_max_rows
        try:
            while inbox and not self._stats.paused:
                inbound = inbox[0]
                window = self._open
                if window is not None and inbound.received_us >= window.end_us:
                    self._flush()  # the open window's interval is over: its batch and seal come first
                    self._seal_open()
                inbox.popleft()
                self._handle(inbound)
                window = self._open
                if window is not None and window.rows + self._batch.rows >= max_rows:
                    self._flush()
                    self._seal_open()
        except OSError as exc:
            self._write_failed(exc)

    def _handle(self, inbound: _Inbound) -> None:
        self._stats.received += 1
        self._classify(inbound.topic, inbound.payload, inbound.received_us)
        batch = self._batch
        if not batch.messages:
            batch.first_at = time.monotonic()
        batch.messages += 1
        if inbound.qos > 0:
            batch.acks.append((self._generation, inbound.mid, inbound.qos))

    def _classify(self, topic: str | bytes, raw: bytes, received_us: int) -> None:
        """Dead-letter, ignore, drop as duplicate, or add to the batch as a row of the open window."""
        if isinstance(topic, bytes):
            self._dead_letter(received_us, repr(topic), "topic is not UTF-8", raw)
            return
        if len(raw) > self.settings.max_payload_bytes:
            reason = f"payload of {len(raw)} bytes exceeds max_payload_bytes={self.settings.max_payload_bytes}"
            self._dead_letter(received_us, topic, reason, raw)
            return
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._dead_letter(received_us, topic, f"payload is not UTF-8: {exc}", raw)
            return
        try:
            accepted = accept_telemetry(topic, raw, received_at=_from_us(received_us), default_site=self.settings.site)
        except PayloadError as exc:
            self._dead_letter(received_us, topic, exc.reason, raw)
            return
        except Exception as exc:  # a payload must never stop the stream, whatever the parser trips on
            self._dead_letter(received_us, topic, f"rejected ({type(exc).__name__}): {exc}", raw)
            return
        if accepted is None:
            self._stats.ignored += 1
            return
        model = accepted.model
        seq = model.seq
        if seq is not None and seq > _INT64_MAX:
            self._dead_letter(received_us, topic, f"seq {seq} does not fit a 64-bit integer", raw)
            return
        ts_us = _to_us(model.ts)
        if seq is not None:
            fingerprint = None if ts_us == received_us else ts_us
            if self._dedup.seen(model.asset_id, seq, fingerprint):
                self._stats.duplicates_dropped += 1
                self._window_duplicates += 1
                return
            self._dedup.add(model.asset_id, seq, fingerprint, received_us)
        else:
            self._stats.without_seq += 1
        site = self._site_of(topic)
        self._open_window_for(received_us)
        batch = self._batch
        batch.asset_id.append(model.asset_id)
        batch.kind.append(str(model.kind))
        batch.site.append(site)
        batch.topic.append(topic)
        batch.ts_us.append(ts_us)
        batch.received_us.append(received_us)
        batch.seq.append(seq)
        batch.payload.append(accepted.wire.decode())

    def _site_of(self, topic: str) -> str:
        """The site a telemetry topic names (cached: a plant has a bounded set of topics)."""
        site = self._site_by_topic.get(topic)
        if site is None:
            info = parse_telemetry_topic(topic, self.settings.site)
            site = info.site if info is not None else self.settings.site
            if len(self._site_by_topic) >= _TOPIC_CACHE_SIZE:
                self._site_by_topic.clear()
            self._site_by_topic[topic] = site
        return site

    def _dead_letter(self, received_us: int, topic: str, reason: str, raw: bytes) -> None:
        """Queue the dead-letter line for the batch, within the budget (`DeadLetterBudget`)."""
        self._stats.dead_letters += 1
        self._window_dead_letters += 1
        budget = self._dead_letter_budget
        if not budget.admit_line(topic, len(raw), received_us):
            self._stats.dead_letters_counted_only += 1
            return
        keep_payload = budget.admit_payload(topic, len(raw), received_us)
        if not keep_payload:
            self._stats.dead_letter_payloads_dropped += 1
            self._stats.dead_letter_payload_bytes_dropped += len(raw)
        received_at = _from_us(received_us)
        entry, blob = self._dead_letters.record(
            received_at=received_at,
            topic=topic,
            reason=reason,
            raw=raw,
            max_inline=self.settings.max_payload_bytes,
            keep_payload=keep_payload,
        )
        batch = self._batch
        batch.dead_letters.append((received_at, entry))
        if blob is not None:
            batch.blobs[entry["sha256"]] = blob
            batch.held_bytes += len(blob)
        log.debug("dead letter from %s: %s", topic, reason)

    def _open_window_for(self, received_us: int) -> None:
        """Open the window that holds this receipt time, unless one is open.

        `_drain_inbox` seals a window whose interval is over before it hands on the next message, so
        an open window here holds this receipt time (or the clock stepped back: stay in it).
        """
        if self._open is None:
            self._open = self._new_window(aligned_window_start(_from_us(received_us), self.settings.window_seconds))

    def _new_window(self, start: datetime) -> _OpenWindow:
        part = self._next_window_part(start)
        key = window_key(start, self.settings.collector_id, part)
        start_us = _to_us(start)
        return _OpenWindow(
            key=key, start_us=start_us, end_us=start_us + self._window_us, directory=self.open_root / key
        )

    def _next_window_part(self, start: datetime) -> int:
        """Part index after the windows of this interval already sealed (row cap, or a restart)."""
        prefix = window_key(start, self.settings.collector_id, 0)[: -len("000")]
        parts = [
            parse_window_key(path.stem)[2]
            for path in (sealed_dir(self.windows_dir) / prefix[:8]).glob(f"{prefix}*.parquet")
            if self._is_mine(path.stem)
        ]
        return max(parts) + 1 if parts else 0

    # ---- group commit and sealing ----

    def _commit_if_due(self) -> None:
        """The group commit once due, the seal of a window whose interval is over, due counter lines."""
        batch = self._batch
        if batch.messages and (
            batch.messages >= self.flush_at_messages
            or batch.held_bytes >= _FLUSH_AT_HELD_BYTES
            or time.monotonic() - batch.first_at >= self.flush_after_s
        ):
            self._flush()
        self._maybe_seal_by_time()
        if self._dead_letter_budget.counter_lines_due(_now_us()):
            self._write_counter_lines()

    def _flush_and_seal_by_time(self) -> None:
        self._flush()
        self._maybe_seal_by_time()

    def _flush(self) -> None:
        """Make the batch durable (part file, then blob files and dead letters), then acknowledge all of it.

        Each write that succeeded is dropped from the batch at once, so after a failed one (OSError)
        a retry redoes only what is missing, and nothing is acknowledged before all of it is on disk.
        """
        batch = self._batch
        if not batch.messages and not batch.dead_letters:
            return
        if batch.rows:
            window = self._open
            if window is None:
                raise RuntimeError("rows to write but no open window")
            if not window.directory_made:
                window.directory.mkdir(parents=True, exist_ok=True)
                fsync_dir(self.open_root)
                window.directory_made = True
            path = window.directory / f"part-{window.next_part_file:06d}{PART_SUFFIX}"
            write_atomic(path, batch.frame().write_ipc)
            window.next_part_file += 1
            window.rows += batch.rows
            self._stats.rows_written += batch.rows
            self._stats.parts_written += 1
            batch.clear_rows()
        if batch.dead_letters:
            self._dead_letters.append(batch.dead_letters, batch.blobs)
            batch.dead_letters = []
            batch.blobs = {}
            batch.held_bytes = 0
        self._send_acks(batch.acks)
        self._stats.flushes += 1
        self._batch = _Batch()

    def _write_counter_lines(self, *, final: bool = False) -> None:
        """One line per topic for the rejected messages of a past minute that were only counted."""
        budget = self._dead_letter_budget
        for minute, topic, counted in budget.take_counter_lines(_now_us(), final=final):
            entry = self._dead_letters.counter_entry(minute, topic, counted, budget)
            self._batch.dead_letters.append((_from_us(minute * _US_PER_MINUTE), entry))
        self._flush()

    def _send_acks(self, acks: list[tuple[int, int, int]]) -> None:
        client = self._client
        if client is None or not self._connected:
            return
        current = [(mid, qos) for generation, mid, qos in acks if generation == self._generation]
        client.ack_all(current)
        self._stats.acked += len(current)
        self._unacked -= len(current)

    def _maybe_seal_by_time(self) -> None:
        window = self._open
        if window is not None and _now_us() >= window.end_us:
            self._flush()
            self._seal_open()

    def _seal_if_full(self) -> None:
        window = self._open
        if window is not None and window.rows >= self.settings.window_max_rows:
            self._seal_open()

    def _seal_open(self) -> None:
        """Combine the open window's parts into its sealed Parquet file, then remove the parts.

        The window stays open until its sealed file is written, so a failed seal is retried.
        """
        window = self._open
        if window is None:
            return
        parts = sorted(window.directory.glob(f"part-*{PART_SUFFIX}"))
        if parts:
            frame = pl.concat([pl.read_ipc(part) for part in parts], how="vertical").select(
                [pl.col(name).cast(dtype) for name, dtype in WINDOW_SCHEMA.items()]
            )
            write_parquet_atomic(frame, sealed_window_path(self.windows_dir, window.key))
            if self._publisher is not None:
                self._publisher.notify()
            self._stats.windows_sealed += 1
            self._stats.rows_sealed += frame.height
            self._stats.last_sealed_key = window.key
            log.info(
                "sealed window %s: %d rows, %d duplicates dropped, %d dead letters",
                window.key,
                frame.height,
                self._window_duplicates,
                self._window_dead_letters,
            )
            self._window_duplicates = 0
            self._window_dead_letters = 0
        self._open = None
        self._remove_parts(window.directory, parts)
        if MALLOC_TRIM is not None:
            MALLOC_TRIM(0)

    def _remove_parts(self, directory: Path, parts: list[Path]) -> None:
        """Best effort once the seal is done: parts left over are removed again on the next start."""
        try:
            for part in parts:
                part.unlink(missing_ok=True)
            for leftover in directory.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)
            directory.rmdir()
            fsync_dir(self.open_root)
        except FileNotFoundError:
            pass  # no row ever reached this window: its directory was never made
        except OSError as exc:  # someone put a file there: leave it rather than stop collecting
            log.warning("could not remove %s: %s", directory, exc)

    # ---- failed writes: pause, retry, resume ----

    def _durably(self, step: Callable[[], None]) -> bool:
        """Run a step that writes; a failed write pauses the collector instead of ending it."""
        if self._stats.paused:
            return False
        try:
            step()
        except OSError as exc:
            self._write_failed(exc)
            return False
        return True

    def _write_failed(self, exc: OSError) -> None:
        """Note a failed write: the first one of a spell pauses (one ERROR), later ones back off further."""
        stats = self._stats
        where = Path(exc.filename) if exc.filename else self.settings.data_path
        code = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else "OSError"
        stats.write_failures += 1
        stats.pause_reason = f"{code} writing {where}: {exc.strerror or exc}"
        stats.disk_full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        now = time.monotonic()
        if not stats.paused:
            stats.paused = True
            stats.pauses += 1
            self._paused_since = self._last_pause_report = now
            self._retry_delay = _RETRY_FIRST_S
            free = _free_bytes(where)
            log.error(
                "%s: %s (%s bytes free there). Paused: %d messages held in memory, not acknowledged (the broker "
                "keeps them); retrying with backoff up to every %.0f s",
                "disk full" if stats.disk_full else "write failed",
                stats.pause_reason,
                "unknown" if free is None else f"{free:,}",
                self._batch.messages + len(self._inbox),
                _RETRY_MAX_S,
            )
        else:
            self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX_S)
            if now - self._last_pause_report >= _STILL_PAUSED_REPORT_S:
                self._last_pause_report = now
                log.warning("still paused after %.0f s: %s", now - self._paused_since, stats.pause_reason)
        self._retry_at = now + self._retry_delay

    def _retry_writes_if_due(self) -> None:
        """While paused: redo the failed step (the batch, a due seal) once its retry time has come."""
        if time.monotonic() < self._retry_at:
            return
        try:
            self._flush()
            self._maybe_seal_by_time()
            self._seal_if_full()
        except OSError as exc:
            self._write_failed(exc)
            return
        self._resume()

    def _resume(self) -> None:
        stats = self._stats
        stats.paused = False
        stats.disk_full = False
        log.info(
            "writes work again after %.1f s paused (%d failed attempts in all): collecting and acknowledging again",
            time.monotonic() - self._paused_since,
            stats.write_failures,
        )

    def _shutdown(self, client: paho.Client, *, end_session: bool = False) -> None:
        """Clean stop: write and acknowledge what was received, seal the open window, say goodbye.

        While writes fail, whatever is not on disk stays unacknowledged: the broker keeps it for
        the next start. `end_session` (a retiring run, drained): the goodbye sets the Session
        Expiry Interval to 0, so the broker forgets the session; only if nothing is left unwritten.
        """
        if self._stats.paused:
            self._retry_at = 0.0
            self._retry_writes_if_due()
        self._drain_inbox()
        self._durably(lambda: self._write_counter_lines(final=True))
        self._durably(self._flush)
        self._durably(self._seal_open)
        if self._stats.paused:
            log.error(
                "stopping while writes fail (%s): %d received messages were not written nor acknowledged",
                self._stats.pause_reason,
                self._batch.messages + len(self._inbox),
            )
        if not self._connected:
            return
        end_session = end_session and not (self._stats.paused or self._inbox or self._batch.messages or self._unacked)
        if end_session:
            goodbye = Properties(PacketTypes.DISCONNECT)
            goodbye.SessionExpiryInterval = 0
            self._stats.retired = client.disconnect(properties=goodbye) == paho.MQTT_ERR_SUCCESS
        else:
            client.disconnect()
        deadline = time.monotonic() + 2.0
        while self._connected and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != paho.MQTT_ERR_SUCCESS:
                break
        # Messages that arrived after the last flush were not acknowledged: the broker keeps them.
        self._inbox.clear()
        if self._stats.retired and self._connected:  # the DISCONNECT never went out
            self._stats.retired = False


def run_collector(
    settings: FactorySettings, *, shared: bool = False, retire: bool = False, stop: threading.Event | None = None
) -> CollectorStats:
    """Run a collector until `stop` is set (blocking); `factory collect` calls this.

    `retire` (with `shared`): run until this id's session is drained, then end it (`stats.retired`).
    """
    return Collector(settings, shared=shared, retire=retire).run(stop)


def main(argv: list[str] | None = None) -> int:
    """`python -m sensors.collector`: settings from FACTORY_* env; SIGTERM/SIGINT stop it cleanly."""
    parser = argparse.ArgumentParser(description="MQTT telemetry collector writing sealed window files.")
    parser.add_argument("--shared", action="store_true", help=f"join the $share/{SHARED_GROUP} group")
    parser.add_argument(
        "--retire",
        action="store_true",
        help="with --shared: drain this stopped member's session into windows, then end the session for good",
    )
    parser.add_argument("--log-level", default=os.environ.get("FACTORY_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if args.retire and not args.shared:
        parser.error("--retire needs --shared: only a member of the shared subscription can be retired")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    settings = load_settings()
    stop = threading.Event()

    def _request_stop(signum: int, _frame: object) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    stats = run_collector(settings, shared=args.shared, retire=args.retire, stop=stop)
    return 1 if args.retire and not stats.retired else 0


if __name__ == "__main__":
    sys.exit(main())
