"""What feeds the bridge's live picture: MQTT, and the serving store at start and now and then.

`BridgeFeed` subscribes to the site's telemetry (`factory/{site}/#`, the seed devices'
`factory/machine/+/telemetry`, `cleanroom/{site}/status`) and to the platform's outputs
(`predictions/#`, `alerts/#`), QoS 1 with a clean session: the bridge is a cache of latest
values, not a record. Each message goes to `BridgeState.handle_message`, which never raises.

The connection is made in the background: `start()` never blocks on the broker and never fails;
while the broker is away it retries, and once connected paho reconnects by itself (`on_connect`
subscribes again). The state counts as connected once the broker confirmed the subscriptions; a
dropped connection marks every value stale (`BridgeState.mark_disconnected`).

The serving store gives what MQTT cannot: the latest prediction per model and asset (so values
are there before the next window is scored) and the open alerts (MQTT carries openings and
escalations, but acknowledgements and clears are not all published). Both are read at start,
and the open alerts again every `alert_resync_s`. A store that does not answer is logged and
tried again at the next resync; it never stops the feed. The bridge only reads the store, so it
does not apply migrations (the API does).

Commands go out through `publish`, which refuses (ConnectionError) while the broker is away, so a
command never reaches an asset long after its sender was told it failed.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.alert_model import AlertRecord
from factory_pipelines.mqtt import BrokerTarget, connect_and_wait, make_client, publish_confirmed
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import LEGACY_MACHINE_SITE, cleanroom_topic
from scada_bridge.state import ALERTS_PREFIX, PREDICTIONS_PREFIX, BridgeState

log = logging.getLogger(__name__)

DEFAULT_ALERT_RESYNC_S = 30.0
CONNECT_TIMEOUT_S = 5.0
RECONNECT_MAX_DELAY_S = 10.0
ALERT_PAGE = 500
PUBLISH_TIMEOUT_S = 5.0


def bridge_subscriptions(site: str) -> tuple[str, ...]:
    """Every topic the bridge follows for one site."""
    topics = [f"factory/{site}/#", cleanroom_topic(site), f"{PREDICTIONS_PREFIX}#", f"{ALERTS_PREFIX}#"]
    if site != LEGACY_MACHINE_SITE:
        topics.insert(1, f"factory/{LEGACY_MACHINE_SITE}/+/telemetry")  # seed devices: taken as this site's
    return tuple(topics)


def read_open_alerts(book: AlertBook) -> list[AlertRecord]:
    """Every open alert, page by page (a plant can have more than one page open)."""
    records: list[AlertRecord] = []
    while True:
        page = book.list_alerts(open_only=True, limit=ALERT_PAGE, offset=len(records))
        records.extend(page.items)
        if not page.items or len(records) >= page.total:
            return records


class BridgeFeed:
    """Keeps a `BridgeState` current from MQTT and the serving store; publishes commands."""

    def __init__(
        self,
        state: BridgeState,
        mqtt_url: BrokerTarget,
        *,
        db_url: str | None = None,
        client_id: str | None = None,
        alert_resync_s: float | None = DEFAULT_ALERT_RESYNC_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        reconnect_max_delay_s: float = RECONNECT_MAX_DELAY_S,
    ) -> None:
        self.state = state
        self.mqtt_url = mqtt_url
        self.db_url = db_url
        self.client_id = client_id or f"factory-bridge-{uuid.uuid4().hex[:8]}"
        self.alert_resync_s = alert_resync_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_max_delay_s = reconnect_max_delay_s
        self.topics = bridge_subscriptions(state.site)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._subscribe_mid: int | None = None
        self._connection_lost = False  # since the last confirmed subscription
        self._store: ServingStore | None = None
        self._threads: list[threading.Thread] = []
        self.last_store_error: str | None = None
        self.store_syncs = 0

    # ---- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Seed from the store and connect, both in the background; returns at once."""
        if self._threads:
            return
        targets = [(self._connect_loop, "bridge-mqtt-connect")]
        if self.db_url:
            targets.append((self._store_loop, "bridge-store-sync"))
        for target, name in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect, stop the background threads, close the store."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self.state.mark_disconnected()
        if self._store is not None:
            self._store.dispose()

    # ---- MQTT --------------------------------------------------------------------------------

    def _connect_loop(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            client = make_client(self.client_id)
            client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(self.reconnect_max_delay_s)))
            client.on_connect = self._on_connect
            client.on_subscribe = self._on_subscribe
            client.on_disconnect = self._on_disconnect
            client.on_message = self._on_message
            try:
                connect_and_wait(client, self.mqtt_url, timeout=self.connect_timeout_s)
            except ConnectionError as exc:
                log.warning("bridge: %s; trying again in %.1f s", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.reconnect_max_delay_s)
                continue
            with self._lock:
                self._client = client
            log.info("bridge: connected to %s, following %s", self.mqtt_url, ", ".join(self.topics))
            return  # paho reconnects by itself from now on

    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if getattr(reason, "is_failure", False):
            return
        _rc, mid = client.subscribe([(topic, 1) for topic in self.topics])
        with self._lock:
            self._subscribe_mid = mid

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, reasons: list[Any], _props: Any) -> None:
        """Values count as live once the broker confirmed the subscriptions, not merely the connection."""
        with self._lock:
            if mid != self._subscribe_mid:
                return
        refused = [topic for topic, reason in zip(self.topics, reasons, strict=False) if reason.is_failure]
        if refused:
            log.error("bridge: the broker refused the subscriptions %s", ", ".join(refused))
        with self._lock:
            was_lost, self._connection_lost = self._connection_lost, False
        if was_lost:  # paho reconnected by itself and on_connect subscribed again
            log.info("bridge: MQTT connection back and subscriptions confirmed; values are live again")
        self.state.mark_connected()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not self._stop.is_set():
            log.warning("bridge: MQTT connection lost (%s); values are stale until it is back", reason)
            with self._lock:
                self._connection_lost = True
        self.state.mark_disconnected()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.state.handle_message(message.topic, message.payload)

    @property
    def connected(self) -> bool:
        return self.state.connected

    def wait_connected(self, timeout: float) -> bool:
        """True once the broker accepted the bridge and its subscriptions (for callers that want to know)."""
        waited = threading.Event()
        unsubscribe = self.state.subscribe(lambda _change: waited.set() if self.state.connected else None)
        try:
            return self.state.connected or (waited.wait(timeout) and self.state.connected)
        finally:
            unsubscribe()

    def publish(self, topic: str, payload: bytes, *, timeout: float = PUBLISH_TIMEOUT_S) -> None:
        """QoS 1, waiting for the broker's PUBACK; ConnectionError while disconnected (nothing is queued)."""
        with self._lock:
            client = self._client
        if client is None or not client.is_connected():
            raise ConnectionError(f"not connected to the MQTT broker at {self.mqtt_url}")
        publish_confirmed(client, topic, payload, timeout=timeout)

    # ---- serving store -----------------------------------------------------------------------

    def sync_from_store(self, *, predictions: bool) -> bool:
        """Read the open alerts (and the latest predictions) from the store; False if it did not answer."""
        if not self.db_url:
            return False
        since = self.state.snapshot_started()
        try:
            if self._store is None:
                self._store = ServingStore(self.db_url, apply_migrations=False)
            records = read_open_alerts(AlertBook(self._store.engine))
            latest = self._store.latest_predictions() if predictions else []
        except Exception as exc:  # any driver error: try again at the next resync
            self.last_store_error = f"{type(exc).__name__}: {exc}"
            log.warning("bridge: serving store not read (%s); trying again later", self.last_store_error)
            return False
        # Alerts first: a client that sees the stored predictions then sees their alerts too.
        self.state.replace_alerts(records, since=since)
        self.state.seed_predictions(latest)
        self.last_store_error = None
        self.store_syncs += 1
        return True

    def _store_loop(self) -> None:
        seeded = False
        while not self._stop.is_set():
            seeded = self.sync_from_store(predictions=not seeded) or seeded
            if self.alert_resync_s is None and seeded:
                return
            self._stop.wait(self.alert_resync_s or DEFAULT_ALERT_RESYNC_S)
