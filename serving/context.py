"""What every route needs, built once per app: settings, the store, the broker probe, champions.

Kept on `app.state` (not module globals) so several apps, e.g. one per test, never share state.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import paho.mqtt.client as mqtt
from fastapi import Request
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_when_event_set, wait_exponential

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.api_keys import Principal, key_digest
from factory_pipelines.mqtt import (
    BrokerConnection,
    BrokerTarget,
    as_connection,
    broker_reachable,
    connect_and_wait,
    make_client,
)
from factory_pipelines.orchestrator import AlertDesk, alert_desk_for
from factory_pipelines.settings import FactorySettings
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import utc_now
from serving.champions import DEFAULT_ANSWER_WITHIN_S, DEFAULT_CHAMPION_TTL_S, KNOWN_MODELS, ChampionTracker
from serving.live import LiveTelemetry
from serving.store_connection import StoreConnection
from serving.ttl_cache import AnswerCache, Clock, TtlCache

log = logging.getLogger(__name__)

DEFAULT_BROKER_TTL_S = 5.0
ANSWER_TTL_S = 1.0  # hot read routes answer from memory for this long (see AnswerCache)
MANAGED_KEY_TTL_S = 5.0  # a revoked key is refused within this long
MANAGED_KEY_CACHE_SIZE = 1024
BROKER_PROBE_TIMEOUT_S = 1.0
ALERT_FEED_ATTEMPTS = 4  # a slow or restarting broker gets about 7 s of backoff before a live alert is dropped


@dataclass(frozen=True, slots=True)
class BrokerProbe:
    reachable: bool
    checked_at: datetime


class BrokerMonitor:
    """Whether the MQTT broker answers a CONNECT, asked at most once per TTL."""

    def __init__(
        self, url: BrokerTarget, *, ttl_s: float = DEFAULT_BROKER_TTL_S, clock: Clock = time.monotonic
    ) -> None:
        self.connection = as_connection(url)
        self.url = self.connection.url  # never holds credentials (they live beside it)
        self._cache: TtlCache[BrokerConnection, BrokerProbe] = TtlCache(self._probe, ttl_s, clock)

    def get(self) -> BrokerProbe:
        return self._cache.get(self.connection)

    def expire(self) -> None:
        self._cache.expire()

    @staticmethod
    def _probe(connection: BrokerConnection) -> BrokerProbe:
        return BrokerProbe(broker_reachable(connection, timeout=BROKER_PROBE_TIMEOUT_S), utc_now())


class AlertFeed:
    """The live feed of alerts raised over REST: MQTT QoS 1, best-effort, never in the request's way.

    One client, connected on first use (and again after the broker went away); each publish runs on
    a background thread, so an absent broker costs the request nothing. A connection that fails or a
    publish the broker does not acknowledge in time is retried on a fresh connection with backoff
    (ALERT_FEED_ATTEMPTS); a retry after a lost acknowledgement may deliver the alert twice, which
    its `alert_id` tells apart. The alert itself is already in the store either way.
    """

    def __init__(self, url: BrokerTarget, *, connect_timeout_s: float = 2.0) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()  # ends a publish's retries, so closing never waits out the backoff

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        threading.Thread(target=self._send, args=(messages,), name="alert-feed", daemon=True).start()

    def _send(self, messages: list[tuple[str, bytes]]) -> None:
        with self._lock:
            try:
                for attempt in Retrying(
                    stop=stop_after_attempt(ALERT_FEED_ATTEMPTS) | stop_when_event_set(self._closing),
                    wait=wait_exponential(multiplier=0.5, max=4.0),
                    sleep=self._closing.wait,
                    retry=retry_if_exception_type((ConnectionError, OSError, RuntimeError)),
                    reraise=True,
                ):
                    with attempt:
                        self._send_once(messages)
            except (ConnectionError, OSError, RuntimeError) as exc:
                log.warning("alert feed: %d message(s) not published (%s)", len(messages), exc)

    def _send_once(self, messages: list[tuple[str, bytes]]) -> None:
        try:
            client = self._connected()
            sent = [client.publish(topic, payload, qos=1) for topic, payload in messages]
            for info in sent:
                info.wait_for_publish(self.connect_timeout_s)
                if not info.is_published():
                    raise RuntimeError(f"no acknowledgement within {self.connect_timeout_s} s")
        except (ConnectionError, OSError, RuntimeError):
            self.close_client()  # the next attempt starts on a fresh connection
            raise

    def _connected(self) -> mqtt.Client:
        if self._client is not None and self._client.is_connected():
            return self._client
        self.close_client()
        client = make_client(f"factory-api-alerts-{uuid.uuid4().hex[:8]}")
        connect_and_wait(client, self.url, timeout=self.connect_timeout_s)
        self._client = client
        return client

    def close(self) -> None:
        self._closing.set()
        with self._lock:  # lets a publish attempt in progress finish
            self.close_client()

    def close_client(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None


class AlertDesks:
    """One alert desk per open store object: the connection reopens the store after an outage, the
    desk (planner, Twilio client) is rebuilt with it, not per request."""

    def __init__(self, settings: FactorySettings) -> None:
        self.settings = settings
        self.feed = AlertFeed(settings.mqtt_connection)
        self._lock = threading.Lock()
        self._store: ServingStore | None = None
        self._desk: AlertDesk | None = None

    def for_store(self, store: ServingStore) -> AlertDesk:
        with self._lock:
            if self._store is not store or self._desk is None:
                desk = alert_desk_for(self.settings, AlertBook(store.engine))
                desk.publish, desk.site = self.feed.publish, self.settings.site
                self._store, self._desk = store, desk
            return self._desk


class ManagedKeyCache:
    """Principals of recently seen managed keys (by digest), bounded in size and age."""

    def __init__(self, ttl_s: float = MANAGED_KEY_TTL_S, size: int = MANAGED_KEY_CACHE_SIZE) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._entries: OrderedDict[str, tuple[Principal | None, float]] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, key: str, load: Callable[[str], Principal | None]) -> Principal | None:
        digest, now = key_digest(key), time.monotonic()
        with self._lock:
            cached = self._entries.get(digest)
            if cached is not None and now - cached[1] < self.ttl_s:
                return cached[0]
        found = load(key)
        with self._lock:
            self._entries[digest] = (found, now)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return found

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclass(slots=True)
class ServingContext:
    settings: FactorySettings
    store: StoreConnection
    broker: BrokerMonitor
    champions: ChampionTracker
    alert_desks: AlertDesks = field(init=False)
    managed_keys: ManagedKeyCache = field(init=False)
    live: LiveTelemetry = field(init=False)
    answers: AnswerCache = field(init=False)

    def __post_init__(self) -> None:
        self.answers = AnswerCache(ttl_s=ANSWER_TTL_S)
        self.alert_desks = AlertDesks(self.settings)
        self.managed_keys = ManagedKeyCache()
        # The live MQTT feed connects when the app starts (its lifespan), not when the app is built.
        self.live = LiveTelemetry(self.settings.mqtt_connection, site=self.settings.site, store=self.store)

    def close(self) -> None:
        """Release what the app holds open: the store, the MQTT clients."""
        self.live.close()
        self.store.close()
        self.alert_desks.feed.close()

    @classmethod
    def build(
        cls,
        settings: FactorySettings,
        *,
        model_names: Sequence[str] = KNOWN_MODELS,
        broker_ttl_s: float = DEFAULT_BROKER_TTL_S,
        champion_ttl_s: float = DEFAULT_CHAMPION_TTL_S,
        registry_answer_within_s: float = DEFAULT_ANSWER_WITHIN_S,
        clock: Clock = time.monotonic,
    ) -> ServingContext:
        return cls(
            settings=settings,
            store=StoreConnection(settings.resolved_db_url),
            broker=BrokerMonitor(settings.mqtt_connection, ttl_s=broker_ttl_s, clock=clock),
            champions=ChampionTracker(
                settings.resolved_mlflow_uri,
                model_names,
                ttl_s=champion_ttl_s,
                answer_within_s=registry_answer_within_s,
                clock=clock,
            ),
        )

    def expire_caches(self) -> None:
        """Probe the broker and re-resolve champions on the next /health."""
        self.broker.expire()
        self.champions.expire()
        self.answers.expire()


async def get_context(request: Request) -> ServingContext:
    """FastAPI dependency: the context of the app serving this request."""
    return request.app.state.serving
