"""A numbered QoS 1 stream for fault tests, and what the collector made of it.

`NumberedStream` publishes `(asset_id, seq)`-numbered telemetry at a steady rate until told to stop
and records, from each PUBACK, which messages the broker took responsibility for. Unlike
`MQTTMessageInfo.wait_for_publish` (which raises for a message published while the connection was
down, though paho still holds it and sends it after reconnecting), it reads the acknowledgements
from `on_publish`, so messages queued during a broker outage count once the broker confirms them.
With MQTT v5 a PUBACK also says "no matching subscribers": the broker took the message and gave
it to nobody. Those are kept apart (`unrouted`), since no collector can have them.

`durable_keys` and `sealed_rows` read back what a collector wrote: every (asset_id, seq) on disk,
and the rows of sealed windows.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import polars as pl

from factory_pipelines import mqtt
from factory_pipelines.windows import iter_sealed_keys, read_window

NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT v5 PUBACK reason code

MessageKey = tuple[str, int]


class NumberedStream(threading.Thread):
    """Publishes numbered QoS 1 telemetry at `rate_per_s` until `stop_and_settle`; records the PUBACKs."""

    def __init__(
        self,
        url: str,
        *,
        site: str,
        assets: tuple[str, ...],
        rate_per_s: float,
        client_id: str,
        max_in_flight: int = 500,
    ) -> None:
        super().__init__(name=f"numbered-stream-{client_id}", daemon=True)
        self.url = url
        self.site = site
        self.assets = assets
        self.rate_per_s = rate_per_s
        self.client_id = client_id
        self.max_in_flight = max_in_flight
        # Filled by the stream's thread: read the sets once `stop_and_settle` returned (len() any time).
        self.acknowledged: set[MessageKey] = set()
        self.unrouted: set[MessageKey] = set()  # acknowledged with "no matching subscribers"
        self.refused: dict[MessageKey, str] = {}  # PUBACK with a failure reason
        self.published = 0
        self.disconnects = 0
        self.connects = 0
        self._pending: dict[int, MessageKey] = {}
        self._acks: queue.SimpleQueue[tuple[int, int, str]] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._settled = threading.Event()
        self._settle_timeout_s = 30.0
        self._counts_lock = threading.Lock()
        self.error: BaseException | None = None

    # ---- paho callbacks (network thread): no locks shared with `publish`, which paho calls under its own ----

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, reason: Any, _props: Any) -> None:
        self._acks.put((mid, int(getattr(reason, "value", 0)), str(reason)))

    def _on_connect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not getattr(reason, "is_failure", False):
            with self._counts_lock:
                self.connects += 1

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        with self._counts_lock:
            self.disconnects += 1

    # ---- the stream ----

    def run(self) -> None:
        client = mqtt.make_client(self.client_id)
        client.on_publish = self._on_publish
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        try:
            mqtt.connect_and_wait(client, self.url)
            self._stream(client)
        except BaseException as exc:  # surfaced by stop_and_settle
            self.error = exc
        finally:
            client.disconnect()
            client.loop_stop()
            self._settled.set()

    def _stream(self, client: paho.Client) -> None:
        started = time.monotonic()
        number = 0
        while not self._stopping.is_set():
            asset = self.assets[number % len(self.assets)]
            key = (asset, number // len(self.assets))
            body = {"asset_id": asset, "seq": key[1], "ts": datetime.now(UTC).isoformat(), "Temperature_C": 60.0}
            info = client.publish(f"factory/{self.site}/{asset}/telemetry", json.dumps(body), qos=1)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):  # NO_CONN: paho sends it later
                raise RuntimeError(f"publish of {key} failed: {paho.error_string(info.rc)}")
            self._pending[info.mid] = key
            self.published += 1
            number += 1
            self._record_acks()
            while len(self._pending) >= self.max_in_flight and not self._stopping.is_set():
                self._record_acks(wait_s=0.1)
            pause = started + number / self.rate_per_s - time.monotonic()
            if pause > 0:
                self._stopping.wait(pause)  # pacing the stream, not synchronisation
        deadline = time.monotonic() + self._settle_timeout_s
        while self._pending and time.monotonic() < deadline:
            self._record_acks(wait_s=0.1)

    def _record_acks(self, wait_s: float = 0.0) -> None:
        """Sort every PUBACK that has arrived; waits up to `wait_s` for the first one."""
        try:
            ack = self._acks.get(timeout=wait_s) if wait_s > 0 else self._acks.get_nowait()
        except queue.Empty:
            return
        while True:
            mid, code, reason = ack
            key = self._pending.pop(mid, None)
            if key is not None:
                if code >= 0x80:
                    self.refused[key] = reason
                elif code == NO_MATCHING_SUBSCRIBERS:
                    self.unrouted.add(key)
                else:
                    self.acknowledged.add(key)
            try:
                ack = self._acks.get_nowait()
            except queue.Empty:
                return

    def stop_and_settle(self, timeout: float = 30.0) -> set[MessageKey]:
        """Stop publishing, wait for the PUBACKs still due; returns the keys never acknowledged."""
        self._settle_timeout_s = timeout
        self._stopping.set()
        if not self._settled.wait(timeout + 5):
            raise AssertionError(f"the numbered stream did not settle within {timeout + 5:.0f} s")
        self.join(timeout=5)
        if self.error is not None:
            raise AssertionError(f"the numbered stream failed: {self.error!r}") from self.error
        return set(self._pending.values())


def durable_keys(windows_dir: Path) -> set[MessageKey]:
    """(asset_id, seq) of every row on disk: sealed windows and open part files.

    A part sealed (and removed) between listing and reading is skipped: its rows are then in a window
    listed too late, so the answer falls short for this call, never long; callers poll it.
    """
    frames = [read_window(windows_dir, key).select("asset_id", "seq") for key in iter_sealed_keys(windows_dir)]
    for part in (windows_dir / "open").glob("*/part-*"):
        try:
            frames.append(pl.read_ipc(part, columns=["asset_id", "seq"]))
        except FileNotFoundError:
            continue
    if not frames:
        return set()
    return {(asset, seq) for asset, seq in pl.concat(frames).iter_rows() if seq is not None}


def sealed_rows(windows_dir: Path, *columns: str) -> pl.DataFrame:
    """The chosen columns of every sealed window, with the window key (empty frame when none is sealed)."""
    frames = [
        read_window(windows_dir, key).select(*columns).with_columns(pl.lit(key).alias("window_key"))
        for key in iter_sealed_keys(windows_dir)
    ]
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="vertical_relaxed")


def sealed_rows_received_since(windows_dir: Path, moment: datetime, assets: Iterable[str]) -> pl.DataFrame:
    """Sealed rows of `assets` that the collector received after `moment` (asset_id, window_key)."""
    rows = sealed_rows(windows_dir, "asset_id", "received_at")
    if rows.is_empty():
        return pl.DataFrame(schema={"asset_id": pl.String, "window_key": pl.String})
    after = rows.filter(pl.col("received_at") > moment, pl.col("asset_id").is_in(list(assets)))
    return after.select("asset_id", "window_key")
