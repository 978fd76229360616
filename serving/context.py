"""What every route needs, built once per app: settings, the store, the broker probe, champions.

Kept on `app.state` (not module globals) so several apps, e.g. one per test, never share state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from fastapi import Request

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.mqtt import broker_reachable
from factory_pipelines.orchestrator import AlertDesk, alert_desk_for
from factory_pipelines.settings import FactorySettings
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import utc_now
from serving.champions import DEFAULT_ANSWER_WITHIN_S, DEFAULT_CHAMPION_TTL_S, KNOWN_MODELS, ChampionTracker
from serving.store_connection import StoreConnection
from serving.ttl_cache import Clock, TtlCache

DEFAULT_BROKER_TTL_S = 5.0
BROKER_PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class BrokerProbe:
    reachable: bool
    checked_at: datetime


class BrokerMonitor:
    """Whether the MQTT broker answers a CONNECT, asked at most once per TTL."""

    def __init__(self, url: str, *, ttl_s: float = DEFAULT_BROKER_TTL_S, clock: Clock = time.monotonic) -> None:
        self.url = url
        self._cache: TtlCache[str, BrokerProbe] = TtlCache(self._probe, ttl_s, clock)

    def get(self) -> BrokerProbe:
        return self._cache.get(self.url)

    def expire(self) -> None:
        self._cache.expire()

    @staticmethod
    def _probe(url: str) -> BrokerProbe:
        return BrokerProbe(broker_reachable(url, timeout=BROKER_PROBE_TIMEOUT_S), utc_now())


class AlertDesks:
    """One alert desk per open store object: the connection reopens the store after an outage, the
    desk (planner, Twilio client) is rebuilt with it, not per request."""

    def __init__(self, settings: FactorySettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._store: ServingStore | None = None
        self._desk: AlertDesk | None = None

    def for_store(self, store: ServingStore) -> AlertDesk:
        with self._lock:
            if self._store is not store or self._desk is None:
                self._store, self._desk = store, alert_desk_for(self.settings, AlertBook(store.engine))
            return self._desk


@dataclass(slots=True)
class ServingContext:
    settings: FactorySettings
    store: StoreConnection
    broker: BrokerMonitor
    champions: ChampionTracker
    alert_desks: AlertDesks = field(init=False)

    def __post_init__(self) -> None:
        self.alert_desks = AlertDesks(self.settings)

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
            broker=BrokerMonitor(settings.mqtt_url, ttl_s=broker_ttl_s, clock=clock),
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


def get_context(request: Request) -> ServingContext:
    """FastAPI dependency: the context of the app serving this request."""
    return request.app.state.serving
