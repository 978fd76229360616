"""The bridge's live picture: the latest value of every point per asset, with its source time and quality.

SCADA systems poll a server that must always answer with the last known value and say how much
to trust it. `BridgeState` keeps, per asset, the newest reading of every point of the point list
(`scada_bridge.points`), the newest prediction per model, the open alerts, and the asset's last
command acknowledgement, and computes a quality for each value when asked:

- GOOD: received (or seeded from the store) while the broker connection that is up now was up.
- STALE: the broker connection dropped since: the value is kept, but nothing confirms it is still
  current. A value turns GOOD again as soon as a new message brings it after reconnecting; values
  nobody sends again stay STALE (a prediction until its model's next window).
- BAD: the reading is not a usable number (NaN, infinite). A point never received has no value at
  all (None), which servers show as bad / waiting for initial data.

An asset's own quality is BAD while it has no value, GOOD while any of its values is GOOD (data is
flowing for it), STALE otherwise. Its age is the time since the newest of its readings arrived, on
the bridge's own monotonic clock (device clocks may be off).

It is fed by `scada_bridge.feed.BridgeFeed` (MQTT and the serving store) through `handle_message`
and the `apply_*` / `seed_*` methods, which never raise on bad input: a payload the contract
refuses is counted and its reason kept. Every method is thread-safe; `subscribe(listener)` calls
back after each change, outside the lock, on the feeding thread (the OPC UA server uses it).

The number of assets is bounded (`max_assets`): an asset first seen when the bound is reached is
not tracked, and counted in `assets_refused`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum

from pydantic import BaseModel, ValidationError

from factory_pipelines.alert_model import AlertRecord, AlertState
from factory_pipelines.telemetry import (
    Alert,
    CommandAck,
    PayloadError,
    PayloadKind,
    Prediction,
    Severity,
    TopicError,
    parse_telemetry,
    parse_telemetry_topic,
    utc_now,
)
from scada_bridge.points import (
    ALERT_SEVERITIES,
    POINTS,
    TELEMETRY_MODELS,
    Point,
    PointGroup,
    is_good_number,
    prediction_values,
    telemetry_values,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_ASSETS = 200
RECENT_REJECTIONS = 20
TOUCHED_ALERTS_LIMIT = 10_000  # alert ids remembered for merging a store snapshot with what MQTT said meanwhile
CYCLE_RATE_SAMPLE_S = 10.0  # keep one cycle_count sample per this many seconds of source time
CYCLE_RATE_SAMPLES = 60  # about ten minutes of history for a robot's cycle rate
PREDICTIONS_PREFIX = "predictions/"
ALERTS_PREFIX = "alerts/"


class Quality(IntEnum):
    """Register values of the Modbus status register; OPC UA maps them to Good / Uncertain / Bad."""

    GOOD = 0
    STALE = 1
    BAD = 2


class ChangeKind(StrEnum):
    ASSET_ADDED = "asset_added"
    VALUES = "values"
    ALERTS = "alerts"
    CONNECTION = "connection"  # every value's quality may have changed


@dataclass(frozen=True, slots=True)
class StateChange:
    kind: ChangeKind
    asset_id: str | None = None  # None: every asset (connection) or an alert without an asset
    keys: tuple[str, ...] = ()


Listener = Callable[[StateChange], None]


@dataclass(frozen=True, slots=True)
class PointValue:
    value: float
    source_ts: datetime
    received_at: datetime
    quality: Quality


@dataclass(frozen=True, slots=True)
class _Reading:
    value: float
    source_ts: datetime
    received_at: datetime
    received_mono: float
    generation: int  # the connection generation it arrived in (bumped at every disconnect)


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """An alert that is not cleared, as the bridge knows it (from the store or an `Alert` message)."""

    alert_id: str
    severity: Severity
    source: str
    type: str
    asset_id: str | None
    acknowledged: bool
    ts: datetime
    level: str | None = None

    @classmethod
    def of_record(cls, record: AlertRecord) -> OpenAlert:
        return cls(
            alert_id=record.alert_id,
            severity=record.severity,
            source=record.source,
            type=record.type,
            asset_id=record.asset_id,
            acknowledged=record.acknowledged_at is not None,
            ts=record.last_seen,
            level=record.level,
        )


@dataclass(frozen=True, slots=True)
class LastAck:
    command_id: str
    command: str
    status: str  # done / rejected
    ts: datetime


@dataclass(frozen=True, slots=True)
class AssetSnapshot:
    """Everything about one asset at one moment, read under one lock."""

    asset_id: str
    values: dict[str, PointValue]  # by point key; alert count points included
    sources: frozenset[str]  # payload kinds and model names it has sent
    quality: Quality
    age_s: float | None  # since its newest reading arrived; None without any
    alert_counts: dict[Severity, int]
    unacknowledged_alerts: int
    last_ack: LastAck | None


@dataclass(frozen=True, slots=True)
class StateStats:
    connected: bool
    generation: int
    assets: int
    assets_refused: int
    accepted: int
    rejected: int
    ignored: int
    open_alerts: int
    recent_rejections: tuple[str, ...]


@dataclass
class _CycleRate:
    """Cycles per hour of one robot from its cycle_count over about the last ten minutes of source time."""

    samples: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=CYCLE_RATE_SAMPLES))
    latest: tuple[float, float] | None = None

    def add(self, ts: datetime, cycles: float) -> None:
        at = ts.timestamp()
        if self.latest is not None and cycles < self.latest[1]:
            self.samples.clear()  # the counter went back: the robot restarted
        self.latest = (at, cycles)
        if not self.samples or at - self.samples[-1][0] >= CYCLE_RATE_SAMPLE_S:
            self.samples.append(self.latest)

    def per_hour(self) -> float | None:
        if not self.samples or self.latest is None:
            return None
        (t0, c0), (t1, c1) = self.samples[0], self.latest
        if t1 - t0 < CYCLE_RATE_SAMPLE_S or c1 <= c0:
            return None
        return (c1 - c0) / ((t1 - t0) / 3600.0)


@dataclass
class _Asset:
    asset_id: str
    readings: dict[str, _Reading] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)
    predictions: dict[str, Prediction] = field(default_factory=dict)
    cycle_rate: _CycleRate = field(default_factory=_CycleRate)
    last_ack: LastAck | None = None


def _prediction_order(prediction: Prediction) -> tuple[datetime, datetime]:
    """Newer window first, then newer production: a backfill of an old window never hides the latest."""
    return (prediction.window_start or prediction.produced_at, prediction.produced_at)


def _alert_state(alert: Alert) -> str:
    return str((alert.model_extra or {}).get("state") or "").upper()


class BridgeState:
    """The latest value of every point per asset, with source time and quality; thread-safe."""

    def __init__(
        self,
        *,
        site: str = "main",
        points: tuple[Point, ...] = POINTS,
        max_assets: int = DEFAULT_MAX_ASSETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_assets < 1:
            raise ValueError(f"max_assets must be at least 1, got {max_assets}")
        self.site = site
        self.points = points
        self.max_assets = max_assets
        self._clock = clock
        self._lock = threading.RLock()
        self._assets: OrderedDict[str, _Asset] = OrderedDict()  # order of first sight
        self._alerts: dict[str, OpenAlert] = {}
        self._alerts_known = False  # seeded from the store, or following alerts/# live
        self._alert_touched: OrderedDict[str, float] = OrderedDict()  # alert id -> when MQTT last changed it
        self._closed: set[str] = set()  # alert ids MQTT reported cleared (within _alert_touched)
        self._connected = False
        self._generation = 0
        self._listeners: list[Listener] = []
        self._accepted = 0
        self._rejected = 0
        self._ignored = 0
        self._assets_refused = 0
        self._rejections: deque[str] = deque(maxlen=RECENT_REJECTIONS)

    # ---- listeners ---------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(change)` after every change; returns a function that unsubscribes it."""
        with self._lock:
            self._listeners.append(listener)

        def _unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return _unsubscribe

    def _notify(self, changes: Iterable[StateChange]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for change in changes:
            for listener in listeners:
                try:
                    listener(change)
                except Exception:  # a listener's bug must not stop the feed
                    log.exception("bridge state listener failed on %s", change)

    # ---- connection --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    def mark_connected(self) -> None:
        """The broker accepted us (again): values arriving from now on are GOOD."""
        with self._lock:
            if self._connected:
                return
            self._connected = True
            self._alerts_known = True  # from now on alerts/# tells every new alert
        self._notify([StateChange(ChangeKind.CONNECTION)])

    def mark_disconnected(self) -> None:
        """The broker connection dropped: every value is kept, and STALE until it is received again."""
        with self._lock:
            if not self._connected:
                return
            self._connected = False
            self._generation += 1
        self._notify([StateChange(ChangeKind.CONNECTION)])

    # ---- feeding -----------------------------------------------------------------------------

    def handle_message(self, topic: str, payload: bytes, *, received_at: datetime | None = None) -> None:
        """One MQTT message of any subscribed topic; never raises (bad payloads are counted)."""
        try:
            self._handle(topic, payload, received_at or utc_now())
        except (PayloadError, TopicError, ValidationError, ValueError) as exc:
            self._reject(topic, str(getattr(exc, "reason", exc)))
        except Exception as exc:  # nothing a device sends may stop the network thread
            log.exception("bridge: unexpected error on %s", topic)
            self._reject(topic, f"internal error: {exc}")

    def _handle(self, topic: str, payload: bytes, received_at: datetime) -> None:
        if topic.startswith(PREDICTIONS_PREFIX):
            self.apply_prediction(Prediction.model_validate_json(payload), received_at=received_at)
            return
        parts = topic.split("/")
        if topic.startswith(ALERTS_PREFIX) or (parts[:2] == ["factory", self.site] and parts[3:] == ["alerts"]):
            self.apply_alert(Alert.model_validate_json(payload))
            return
        info = parse_telemetry_topic(topic, self.site)
        if info is None or info.site != self.site:
            self._count_ignored()
            return
        model = parse_telemetry(topic, payload, received_at=received_at, default_site=self.site)
        if isinstance(model, CommandAck):
            self.apply_command_ack(model)
        elif model is not None and PayloadKind(model.kind) in TELEMETRY_MODELS:
            self.apply_telemetry(model, received_at=received_at)
        else:
            self._count_ignored()

    def _reject(self, topic: str, reason: str) -> None:
        with self._lock:
            self._rejected += 1
            self._rejections.append(f"{topic}: {reason}"[:500])

    def _count_ignored(self) -> None:
        with self._lock:
            self._ignored += 1

    def _asset(self, asset_id: str, changes: list[StateChange]) -> _Asset | None:
        """The asset's entry, created on first sight while there is room (caller holds the lock)."""
        asset = self._assets.get(asset_id)
        if asset is not None:
            return asset
        if len(self._assets) >= self.max_assets:
            self._assets_refused += 1
            return None
        asset = self._assets[asset_id] = _Asset(asset_id)
        changes.append(StateChange(ChangeKind.ASSET_ADDED, asset_id))
        return asset

    def _store(self, asset: _Asset, values: dict[str, float], source_ts: datetime, received_at: datetime) -> None:
        mono = self._clock()
        for key, value in values.items():
            asset.readings[key] = _Reading(value, source_ts, received_at, mono, self._generation)

    def apply_telemetry(self, payload: BaseModel, *, received_at: datetime | None = None) -> bool:
        """A validated telemetry payload (robot, machine, cleanroom, safety); False if it carried no point."""
        kind = PayloadKind(getattr(payload, "kind", ""))
        values = telemetry_values(kind, payload, self.points)
        if not values:
            self._count_ignored()
            return False
        received_at = received_at or utc_now()
        changes: list[StateChange] = []
        with self._lock:
            asset = self._asset(str(getattr(payload, "asset_id", "")), changes)
            if asset is None:
                return False
            source_ts = getattr(payload, "ts", None) or received_at
            self._store(asset, values, source_ts, received_at)
            asset.sources.add(kind.value)
            cycles = values.get(f"{PayloadKind.ROBOT.value}/cycle_count")
            if kind == PayloadKind.ROBOT and cycles is not None:
                asset.cycle_rate.add(source_ts, cycles)
            self._accepted += 1
        changes.append(StateChange(ChangeKind.VALUES, asset.asset_id, tuple(values)))
        self._notify(changes)
        return True

    def apply_prediction(self, prediction: Prediction, *, received_at: datetime | None = None) -> bool:
        """The newest prediction of a model for an asset; an older window than the one held is ignored."""
        received_at = received_at or utc_now()
        values = prediction_values(prediction, self.points)
        changes: list[StateChange] = []
        with self._lock:
            asset = self._asset(prediction.asset_id, changes)
            if asset is None:
                return False
            held = asset.predictions.get(prediction.model_name)
            if held is not None and _prediction_order(prediction) < _prediction_order(held):
                self._ignored += 1
                return False
            asset.predictions[prediction.model_name] = prediction
            asset.sources.add(prediction.model_name)
            self._store(asset, values, prediction.produced_at, received_at)
            self._accepted += 1
        changes.append(StateChange(ChangeKind.VALUES, prediction.asset_id, tuple(values)))
        self._notify(changes)
        return True

    def seed_predictions(self, predictions: Iterable[Prediction]) -> int:
        """The store's latest predictions at start, so values are there before the next window; how many were newer."""
        return sum(self.apply_prediction(p) for p in predictions)

    def apply_alert(self, alert: Alert) -> None:
        """An `Alert` message: opened, repeated or made more severe; cleared when its `state` says CLEARED_*."""
        changes: list[StateChange] = []
        cleared = _alert_state(alert).startswith("CLEARED")
        with self._lock:
            if alert.asset_id is not None and not cleared:
                self._asset(alert.asset_id, changes)
            held = self._alerts.get(alert.alert_id)
            if cleared:
                self._alerts.pop(alert.alert_id, None)
                self._closed.add(alert.alert_id)
            else:
                self._alerts[alert.alert_id] = OpenAlert(
                    alert_id=alert.alert_id,
                    severity=alert.severity,
                    source=alert.source,
                    type=alert.type,
                    asset_id=alert.asset_id,
                    acknowledged=_alert_state(alert) == AlertState.ACTIVE_ACK.value,
                    ts=alert.ts,
                    level=(alert.model_extra or {}).get("level"),
                )
                self._closed.discard(alert.alert_id)
            self._touch(alert.alert_id)
            self._accepted += 1
        assets = {alert.asset_id, held.asset_id if held else alert.asset_id}
        changes.extend(StateChange(ChangeKind.ALERTS, asset_id) for asset_id in assets)
        self._notify(changes)

    def _touch(self, alert_id: str) -> None:
        self._alert_touched[alert_id] = self._clock()
        self._alert_touched.move_to_end(alert_id)
        while len(self._alert_touched) > TOUCHED_ALERTS_LIMIT:
            forgotten, _ = self._alert_touched.popitem(last=False)
            self._closed.discard(forgotten)

    def snapshot_started(self) -> float:
        """A mark to pass to `replace_alerts`: take it before reading the store."""
        return self._clock()

    def replace_alerts(self, records: Iterable[AlertRecord], *, since: float) -> None:
        """Make the open alerts the store's (read after `since`), keeping what MQTT said after `since`.

        MQTT carries openings and escalations but not every acknowledgement or clear, so the store
        is re-read now and then; an alert that MQTT opened or cleared while the store was being read
        keeps its MQTT state.
        """
        changes: list[StateChange] = []
        with self._lock:
            fresh = {r.alert_id: OpenAlert.of_record(r) for r in records if r.is_open}
            for alert_id, touched in self._alert_touched.items():
                if touched < since:
                    continue
                if alert_id in self._closed:
                    fresh.pop(alert_id, None)
                elif alert_id in self._alerts:
                    fresh[alert_id] = self._alerts[alert_id]
            for alert in fresh.values():
                if alert.asset_id is not None:
                    self._asset(alert.asset_id, changes)
            before, self._alerts = self._alerts, fresh
            self._alerts_known = True
            for alert_id in [a for a, t in self._alert_touched.items() if t < since]:
                del self._alert_touched[alert_id]
                self._closed.discard(alert_id)
        touched_assets = {a.asset_id for a in before.values() if before.get(a.alert_id) != fresh.get(a.alert_id)}
        touched_assets |= {a.asset_id for a in fresh.values() if before.get(a.alert_id) != a}
        changes.extend(StateChange(ChangeKind.ALERTS, asset_id) for asset_id in touched_assets)
        self._notify(changes)

    def apply_command_ack(self, ack: CommandAck) -> None:
        """An asset's answer to a command: kept as its last acknowledgement (Modbus shows it)."""
        changes: list[StateChange] = []
        with self._lock:
            asset = self._asset(ack.asset_id, changes)
            if asset is None:
                return
            asset.last_ack = LastAck(ack.command_id, ack.command, ack.status, ack.ts)
            self._accepted += 1
        changes.append(StateChange(ChangeKind.VALUES, ack.asset_id))
        self._notify(changes)

    # ---- reading -----------------------------------------------------------------------------

    def _quality(self, reading: _Reading) -> Quality:
        if not is_good_number(reading.value):
            return Quality.BAD
        if self._connected and reading.generation == self._generation:
            return Quality.GOOD
        return Quality.STALE

    def _point_value(self, reading: _Reading) -> PointValue:
        return PointValue(reading.value, reading.source_ts, reading.received_at, self._quality(reading))

    def assets(self) -> list[str]:
        """Asset ids in order of first sight."""
        with self._lock:
            return list(self._assets)

    def value(self, asset_id: str, key: str) -> PointValue | None:
        """The latest value of one point of one asset; None if it never arrived."""
        with self._lock:
            asset = self._assets.get(asset_id)
            if asset is None:
                return None
            if key.startswith("alerts/"):
                return self._alert_values(asset_id).get(key)
            reading = asset.readings.get(key)
            return self._point_value(reading) if reading is not None else None

    def values_of(self, key: str) -> dict[str, PointValue]:
        """One point's latest value for every asset that has it."""
        with self._lock:
            return {
                asset_id: self._point_value(asset.readings[key])
                for asset_id, asset in self._assets.items()
                if key in asset.readings
            }

    def _alert_counts(self, asset_id: str | None) -> tuple[dict[Severity, int], int]:
        counts = dict.fromkeys(ALERT_SEVERITIES, 0)
        unacknowledged = 0
        for alert in self._alerts.values():
            if alert.asset_id == asset_id:
                counts[alert.severity] = counts.get(alert.severity, 0) + 1
                unacknowledged += not alert.acknowledged
        return counts, unacknowledged

    def _alert_values(self, asset_id: str) -> dict[str, PointValue]:
        if not self._alerts_known:
            return {}
        counts, _ = self._alert_counts(asset_id)
        newest = max((a.ts for a in self._alerts.values() if a.asset_id == asset_id), default=None)
        now = utc_now()
        quality = Quality.GOOD if self._connected else Quality.STALE
        return {
            point.key: PointValue(float(counts[Severity(point.path[0])]), newest or now, now, quality)
            for point in self.points
            if point.group == PointGroup.ALERTS
        }

    def snapshot(self, asset_id: str) -> AssetSnapshot | None:
        """The asset's values, quality, age, alert counts and last ack, consistent with each other."""
        with self._lock:
            asset = self._assets.get(asset_id)
            if asset is None:
                return None
            values = {key: self._point_value(reading) for key, reading in asset.readings.items()}
            newest = max((r.received_mono for r in asset.readings.values()), default=None)
            if not values:
                quality = Quality.BAD
            elif any(v.quality == Quality.GOOD for v in values.values()):
                quality = Quality.GOOD
            else:
                quality = Quality.STALE
            values.update(self._alert_values(asset_id))
            counts, unacknowledged = self._alert_counts(asset_id)
            return AssetSnapshot(
                asset_id=asset_id,
                values=values,
                sources=frozenset(asset.sources),
                quality=quality,
                age_s=None if newest is None else max(0.0, self._clock() - newest),
                alert_counts=counts,
                unacknowledged_alerts=unacknowledged,
                last_ack=asset.last_ack,
            )

    def open_alerts(self) -> list[OpenAlert]:
        """Every open alert, most recent first."""
        with self._lock:
            alerts = list(self._alerts.values())
        return sorted(alerts, key=lambda a: (a.ts, a.alert_id), reverse=True)

    def open_alerts_of(self, asset_id: str | None) -> list[OpenAlert]:
        """One asset's open alerts (None: those raised for no asset), most recent first."""
        return [a for a in self.open_alerts() if a.asset_id == asset_id]

    def latest_predictions(self, model_name: str) -> list[Prediction]:
        """The newest prediction of one model for every asset that has one."""
        with self._lock:
            return [a.predictions[model_name] for a in self._assets.values() if model_name in a.predictions]

    def cycle_rate_per_hour(self, asset_id: str) -> float | None:
        """A robot's recent cycles per hour from its cycle_count telemetry; None until known."""
        with self._lock:
            asset = self._assets.get(asset_id)
            return asset.cycle_rate.per_hour() if asset is not None else None

    def stats(self) -> StateStats:
        with self._lock:
            return StateStats(
                connected=self._connected,
                generation=self._generation,
                assets=len(self._assets),
                assets_refused=self._assets_refused,
                accepted=self._accepted,
                rejected=self._rejected,
                ignored=self._ignored,
                open_alerts=len(self._alerts),
                recent_rejections=tuple(self._rejections),
            )
