"""The live picture of the plant held by the API process: the latest reading of every asset, from MQTT.

`LiveTelemetry` subscribes to everything the collector reads (`COLLECTOR_SUBSCRIPTIONS`, QoS 1,
clean session: it is a cache of latest values, not a record; the collector keeps the record) and
validates each message with the contract's own parser, `telemetry.parse_telemetry`, so the API
sees a message exactly as the collector does. For each (kind, asset) of this API's site it keeps
the latest reading, in order of receipt, with the time it arrived; the number of entries is
bounded (the least recently updated go first). A payload the contract refuses is counted, its
reason kept among the last few, and skipped: nothing a device sends can raise out of the network
thread. Messages of other sites are ignored: an API serves one site (`settings.site`).

It also follows what the platform itself publishes, for the WebSocket hub: predictions
(`predictions/#`), alerts (`alerts/#`) and this site's shift backlog (`backlog/{site}`), each
validated with its contract model (`Prediction`, `Alert`, `Backlog`) and handed to followers
(`follow`) as a `PlatformOutput`; none of them is kept (the store holds them). They are parsed only
while someone follows, and counted apart from telemetry (`outputs_accepted`, `outputs_rejected`).

Command acknowledgements (`CommandAck` on an asset's telemetry topic) are recorded in the
serving store through `CommandBook`, on a worker thread of their own (a slow or absent database
must never stall the MQTT network loop; while the store is down they wait, bounded, and are
retried).

The connection is made in the background (`start()` never blocks and never fails: while the
broker is away it retries with backoff); once connected, paho reconnects by itself and
`on_connect` subscribes again. `subscribe(callback)` calls back on every accepted telemetry
message; `follow(callback)` on every telemetry message and platform output, as one event type.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from factory_pipelines.backlog_model import Backlog
from factory_pipelines.command_book import CommandBook
from factory_pipelines.mqtt import BrokerTarget, connect_and_wait, make_client, publish_confirmed
from factory_pipelines.store import StoreUnavailableError
from factory_pipelines.telemetry import (
    COLLECTOR_SUBSCRIPTIONS,
    Alert,
    CommandAck,
    InboundTelemetry,
    PayloadError,
    PayloadKind,
    Prediction,
    TopicError,
    backlog_topic,
    parse_telemetry,
    parse_telemetry_topic,
    utc_now,
)
from serving.store_connection import StoreConnection

log = logging.getLogger(__name__)

DEFAULT_MAX_READINGS = 10_000  # (kind, asset) entries kept; a plant has hundreds of assets
DEFAULT_ACK_BACKLOG = 10_000  # acks waiting for the store before the oldest are dropped
RECENT_REJECTIONS = 20
ACK_RETRY_S = 1.0
CONNECT_TIMEOUT_S = 5.0
RECONNECT_MAX_DELAY_S = 10.0

PREDICTIONS_PREFIX = "predictions/"
ALERTS_PREFIX = "alerts/"

LiveCallback = Callable[[PayloadKind, str, InboundTelemetry], None]


@dataclass(frozen=True, slots=True)
class LatestReading:
    """The newest accepted message of one kind from one asset."""

    kind: PayloadKind
    asset_id: str
    topic: str
    received_at: datetime
    model: InboundTelemetry


class OutputChannel(StrEnum):
    """What the platform publishes that the API follows (the WebSocket channels of the same names)."""

    PREDICTION = "prediction"
    ALERT = "alert"
    BACKLOG = "backlog"


OUTPUT_MODELS: dict[OutputChannel, type[Prediction | Alert | Backlog]] = {
    OutputChannel.PREDICTION: Prediction,
    OutputChannel.ALERT: Alert,
    OutputChannel.BACKLOG: Backlog,
}


@dataclass(frozen=True, slots=True)
class PlatformOutput:
    """A prediction, alert or shift backlog as published on MQTT, validated by its contract model."""

    channel: OutputChannel
    topic: str
    received_at: datetime
    model: Prediction | Alert | Backlog


LiveEvent = LatestReading | PlatformOutput
LiveFollower = Callable[[LiveEvent], None]


def output_subscriptions(site: str) -> tuple[str, ...]:
    """The platform's outputs the API follows: every prediction and alert, and its own site's backlog."""
    return (f"{PREDICTIONS_PREFIX}#", f"{ALERTS_PREFIX}#", backlog_topic(site))


@dataclass(frozen=True, slots=True)
class Rejection:
    topic: str
    reason: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class LiveStatus:
    """How the live feed is doing, for clients that want to know whether "latest" is current."""

    started: bool
    connected: bool
    subscribed: bool
    accepted: int
    rejected: int
    other_sites: int
    readings: int
    evicted: int
    acks_recorded: int
    acks_pending: int
    acks_dropped: int
    last_message_at: datetime | None
    last_error: str | None
    recent_rejections: tuple[Rejection, ...]
    outputs_accepted: int = 0
    outputs_rejected: int = 0


class LiveTelemetry:
    """MQTT subscriber owned by the API process: latest reading per (kind, asset) of one site."""

    def __init__(
        self,
        mqtt_url: BrokerTarget,
        *,
        site: str,
        store: StoreConnection | None = None,
        max_readings: int = DEFAULT_MAX_READINGS,
        ack_backlog: int = DEFAULT_ACK_BACKLOG,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        if max_readings < 1:
            raise ValueError("max_readings must be at least 1")
        self.mqtt_url = mqtt_url
        self.site = site
        self.store = store
        self.max_readings = max_readings
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._state_changed = threading.Condition(self._lock)
        self._readings: OrderedDict[tuple[PayloadKind, str], LatestReading] = OrderedDict()
        self._callbacks: list[LiveCallback] = []
        self._followers: list[LiveFollower] = []
        self._rejections: deque[Rejection] = deque(maxlen=RECENT_REJECTIONS)
        self._counts = {
            "accepted": 0,
            "rejected": 0,
            "other_sites": 0,
            "evicted": 0,
            "outputs_accepted": 0,
            "outputs_rejected": 0,
        }
        self._acks_recorded = 0
        self._acks_dropped = 0
        self._last_message_at: datetime | None = None
        self._last_error: str | None = None
        self._started = False
        self._connected = False
        self._subscribed = False
        self._connection_lost = False  # since the last confirmed subscription
        self._connect_failures = 0  # consecutive failed first connections (paho handles reconnects itself)
        self._client: mqtt.Client | None = None
        self._stop = threading.Event()
        self._connector: threading.Thread | None = None
        self._acks: queue.Queue[tuple[CommandAck, datetime] | None] = queue.Queue(maxsize=ack_backlog)
        self._ack_worker: threading.Thread | None = None

    # ---- life cycle ----

    def start(self) -> None:
        """Connect in the background (idempotent, never blocks); a closed feed stays closed."""
        with self._lock:
            if self._started or self._stop.is_set():
                return
            self._started = True
        self._connector = threading.Thread(target=self._connect_until_up, name="live-telemetry-connect", daemon=True)
        self._connector.start()
        if self.store is not None:
            self._ack_worker = threading.Thread(target=self._record_acks, name="live-telemetry-acks", daemon=True)
            self._ack_worker.start()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until connected and subscribed; False after `timeout`."""
        with self._state_changed:
            return self._state_changed.wait_for(lambda: self._subscribed or self._stop.is_set(), timeout) and (
                self._subscribed
            )

    def close(self) -> None:
        """Disconnect and stop every thread; acks still waiting for the store are dropped (logged)."""
        self._stop.set()
        with self._state_changed:
            self._state_changed.notify_all()
            client, self._client = self._client, None
            self._connected = self._subscribed = False
        if self._connector is not None:  # once stopped it never sets a client; it disconnects its own
            self._connector.join(timeout=self.connect_timeout_s + 5)
        if client is not None:
            client.disconnect()
            client.loop_stop()
        if self._ack_worker is not None:
            with contextlib.suppress(queue.Full):  # if full, the worker sees the stop event within ACK_RETRY_S
                self._acks.put_nowait(None)
            self._ack_worker.join(timeout=ACK_RETRY_S + 5)
        left = self._acks.qsize()
        if left:
            log.warning("live telemetry closed with %d command ack(s) not recorded", left)

    def _connect_until_up(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            client = make_client(f"factory-api-live-{uuid.uuid4().hex[:12]}")
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_subscribe = self._on_subscribe
            client.on_message = self._on_message
            try:
                connect_and_wait(client, self.mqtt_url, timeout=self.connect_timeout_s)
            except ConnectionError as exc:
                with self._state_changed:
                    self._last_error = str(exc)
                    self._connect_failures += 1
                    self._state_changed.notify_all()
                log.info("live telemetry: %s; retrying in %.1f s", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY_S)
                continue
            with self._lock:
                if not self._stop.is_set():
                    self._client = client
                    self._connect_failures = 0
                    return
            client.disconnect()  # closed while we were connecting
            client.loop_stop()
            return

    # ---- paho callbacks (network thread) ----

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if getattr(reason, "is_failure", False):
            with self._lock:
                self._last_error = f"broker refused the connection: {reason}"
            return
        with self._state_changed:
            self._connected = True
            self._state_changed.notify_all()
        topics = (*COLLECTOR_SUBSCRIPTIONS, *output_subscriptions(self.site))
        client.subscribe([(topic, 1) for topic in topics])

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: Any, _props: Any) -> None:
        refused = [str(r) for r in reasons if getattr(r, "is_failure", False)]
        back = False
        with self._state_changed:
            if refused:
                self._last_error = f"subscription refused: {', '.join(refused)}"
            else:
                self._subscribed = True
                back, self._connection_lost = self._connection_lost, False
            self._state_changed.notify_all()
        if back:  # paho reconnected by itself and on_connect subscribed again
            log.info("live telemetry: MQTT connection back and subscriptions confirmed")

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        with self._state_changed:
            self._connected = self._subscribed = False
            if not self._stop.is_set():
                self._last_error = f"disconnected: {reason}"
                self._connection_lost = True
            self._state_changed.notify_all()
        if not self._stop.is_set():
            log.warning("live telemetry: MQTT connection lost (%s); paho reconnects by itself", reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            if self.output_channel(message.topic) is not None:
                self.handle_output(message.topic, message.payload)
            else:
                self.handle(message.topic, message.payload)
        except Exception:  # never let one message stop the network thread
            log.exception("live telemetry: unexpected failure on a message from %s", message.topic)

    # ---- messages ----

    def handle(self, topic: str, payload: bytes, *, received_at: datetime | None = None) -> LatestReading | None:
        """Parse, keep and fan out one message; None when it is skipped (refused, other site, not telemetry)."""
        received_at = received_at or utc_now()
        try:
            info = parse_telemetry_topic(topic, self.site)
        except TopicError as exc:
            self._reject(topic, str(exc), received_at)
            return None
        if info is None:
            return None  # commands and alerts travel under factory/ too
        if info.site != self.site:
            with self._lock:
                self._counts["other_sites"] += 1
            return None
        try:
            model = parse_telemetry(topic, payload, received_at=received_at, default_site=self.site)
        except PayloadError as exc:
            self._reject(topic, exc.reason, received_at)
            return None
        if model is None:
            return None
        reading = LatestReading(PayloadKind(model.kind), model.asset_id, topic, received_at, model)
        self._keep(reading)
        if isinstance(model, CommandAck):
            self._queue_ack(model, received_at)
        self._fan_out(reading)
        return reading

    def output_channel(self, topic: str) -> OutputChannel | None:
        """Which platform output a topic carries; None for telemetry (and anything else)."""
        if topic.startswith(PREDICTIONS_PREFIX):
            return OutputChannel.PREDICTION
        if topic.startswith(ALERTS_PREFIX):
            return OutputChannel.ALERT
        if topic == backlog_topic(self.site):
            return OutputChannel.BACKLOG
        return None

    def handle_output(
        self, topic: str, payload: bytes, *, received_at: datetime | None = None
    ) -> PlatformOutput | None:
        """Validate a prediction, alert or backlog and hand it to followers.

        None when the topic carries none, when nobody follows (not even parsed then), or when its
        contract model refuses it (counted in `outputs_rejected`, skipped).
        """
        channel = self.output_channel(topic)
        with self._lock:
            followed = bool(self._followers)
        if channel is None or not followed:
            return None
        received_at = received_at or utc_now()
        try:
            model = OUTPUT_MODELS[channel].model_validate_json(payload)
        except ValidationError as exc:
            with self._lock:
                self._counts["outputs_rejected"] += 1
            log.debug("live telemetry: skipped a %s on %s: %s", channel.value, topic, exc)
            return None
        output = PlatformOutput(channel, topic, received_at, model)
        with self._lock:
            self._counts["outputs_accepted"] += 1
        self._notify_followers(output)
        return output

    def _reject(self, topic: str, reason: str, received_at: datetime) -> None:
        with self._lock:
            self._counts["rejected"] += 1
            self._rejections.append(Rejection(topic, reason[:300], received_at))
        log.debug("live telemetry: skipped a message on %s: %s", topic, reason)

    def _keep(self, reading: LatestReading) -> None:
        key = (reading.kind, reading.asset_id)
        with self._lock:
            self._readings[key] = reading
            self._readings.move_to_end(key)
            while len(self._readings) > self.max_readings:
                self._readings.popitem(last=False)
                self._counts["evicted"] += 1
            self._counts["accepted"] += 1
            self._last_message_at = reading.received_at

    def latest(self, *, kind: PayloadKind | None = None, asset_id: str | None = None) -> list[LatestReading]:
        """Latest readings matching the filters, by kind then asset."""
        with self._lock:
            found = [
                r
                for r in self._readings.values()
                if (kind is None or r.kind == kind) and (asset_id is None or r.asset_id == asset_id)
            ]
        return sorted(found, key=lambda r: (r.kind.value, r.asset_id))

    def reading(self, kind: PayloadKind, asset_id: str) -> LatestReading | None:
        with self._lock:
            return self._readings.get((kind, asset_id))

    def status(self) -> LiveStatus:
        with self._lock:
            return LiveStatus(
                started=self._started,
                connected=self._connected,
                subscribed=self._subscribed,
                accepted=self._counts["accepted"],
                rejected=self._counts["rejected"],
                other_sites=self._counts["other_sites"],
                readings=len(self._readings),
                evicted=self._counts["evicted"],
                acks_recorded=self._acks_recorded,
                acks_pending=self._acks.qsize(),
                acks_dropped=self._acks_dropped,
                last_message_at=self._last_message_at,
                last_error=self._last_error,
                recent_rejections=tuple(self._rejections),
                outputs_accepted=self._counts["outputs_accepted"],
                outputs_rejected=self._counts["outputs_rejected"],
            )

    # ---- followers (a WebSocket hub) ----

    def subscribe(self, callback: LiveCallback) -> Callable[[], None]:
        """Call `callback(kind, asset_id, model)` for every accepted message, on the network thread.

        Keep it quick (hand the message to a queue). One that raises is logged and dropped.
        Returns a function that unsubscribes it.
        """
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def follow(self, follower: LiveFollower) -> Callable[[], None]:
        """Call `follower(event)` for every accepted telemetry message (a `LatestReading`) and every
        platform output (a `PlatformOutput`), on the network thread.

        Keep it quick: hand the event to a queue, never block (the network thread serves every
        follower and the REST routes' picture). One that raises is logged and dropped. Returns a
        function that stops following.
        """
        with self._lock:
            self._followers.append(follower)

        def unfollow() -> None:
            with self._lock:
                if follower in self._followers:
                    self._followers.remove(follower)

        return unfollow

    def _notify_followers(self, event: LiveEvent) -> None:
        with self._lock:
            followers = list(self._followers)
        for follower in followers:
            try:
                follower(event)
            except Exception:
                log.exception("live telemetry: dropping a follower that failed on an event from %s", event.topic)
                with self._lock:
                    if follower in self._followers:
                        self._followers.remove(follower)

    def _fan_out(self, reading: LatestReading) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(reading.kind, reading.asset_id, reading.model)
            except Exception:
                log.exception("live telemetry: dropping a follower that failed on a %s message", reading.kind.value)
                with self._lock:
                    if callback in self._callbacks:
                        self._callbacks.remove(callback)
        self._notify_followers(reading)

    # ---- publishing (commands) ----

    def publish(self, topic: str, payload: bytes, *, timeout: float) -> None:
        """Publish QoS 1 and wait for the broker's PUBACK.

        ConnectionError when not connected (nothing is queued then, so a command can never reach an
        asset long after its caller was told it failed): at once when the broker refused our last
        attempt to connect, else after waiting up to `timeout` for a connection in progress or a
        reconnect. TimeoutError when the broker does not confirm within `timeout` (paho still holds
        the message and may deliver it).
        """
        self.start()

        def settled() -> bool:
            never_connected = self._client is None and self._connect_failures > 0
            return (self._connected and self._client is not None) or never_connected or self._stop.is_set()

        with self._state_changed:
            self._state_changed.wait_for(settled, timeout)
            client = self._client if self._connected else None
            last_error = self._last_error
        if client is None:
            raise ConnectionError(f"not connected to the MQTT broker at {self.mqtt_url}: {last_error or 'connecting'}")
        publish_confirmed(client, topic, payload, timeout=timeout)

    # ---- command acks -> store ----

    def _queue_ack(self, ack: CommandAck, received_at: datetime) -> None:
        if self.store is None:
            return
        try:
            self._acks.put_nowait((ack, received_at))
        except queue.Full:
            with self._lock:
                self._acks_dropped += 1
            log.warning("live telemetry: ack backlog full, ack of command %s not recorded", ack.command_id)

    def _record_acks(self) -> None:
        assert self.store is not None
        store = self.store
        while not self._stop.is_set():
            item = self._acks.get()
            if item is None:
                return
            self._record_ack(store, *item)

    def _record_ack(self, store: StoreConnection, ack: CommandAck, received_at: datetime) -> None:
        """Record one ack, retrying while the store is down (until closed)."""
        while not self._stop.is_set():
            try:
                store.use(lambda s: CommandBook(s.engine).record_ack(ack, received_at=received_at))
            except StoreUnavailableError as exc:
                log.info("live telemetry: ack of %s waits for the store (%s)", ack.command_id, exc)
                self._stop.wait(ACK_RETRY_S)
                continue
            except Exception:  # a bad ack (or a bug) must not stop the ones after it
                log.exception("live telemetry: ack of command %s not recorded", ack.command_id)
                with self._lock:
                    self._acks_dropped += 1
                return
            with self._lock:
                self._acks_recorded += 1
            return
