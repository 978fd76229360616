"""What a shift's backlog is written from: the evidence known at the shift's start.

Read from the serving store (predictions, alerts) and the typed telemetry rows of the windows, as
they stood at the shift's start, so a backfilled shift sees what its operations lead would have
seen then, not what is known today:
- robots whose RUL interval reaches into the next shifts (the lower end, turned into a time by
  each robot's own cycle rate);
- alerts open at the shift's start, with their plans;
- energy and cyber anomalies, hazard windows and PPE compliance per zone during the last shift;
- cleanroom readings outside their limits during the last shift.
Anything that cannot be read (a store table missing, an unreadable file) becomes a note on the
backlog instead of stopping it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.alert_model import AlertRecord
from factory_pipelines.backlog_model import EvidenceItem, EvidenceKind, ShiftEvidence
from factory_pipelines.shifts import Shift, ShiftCalendar
from factory_pipelines.storage import StoragePath, parquet_files, read_parquet
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import Prediction, utc_now
from factory_pipelines.windows import WindowKeyError, window_start

log = logging.getLogger(__name__)

RUL_MODEL = "rul_lstm"
ENERGY_MODEL = "energy_iforest"
CYBER_MODEL = "cyber_detector"
SAFETY_MODEL = "safety_hazard"
PPE_MODEL = "ppe_vision"

MAX_RELATED = 10  # ids folded into one item beyond its own; enough to follow, short enough to read
ALERT_SCAN = 2000  # most alerts open at one shift start that a backlog reads


@dataclass(frozen=True)
class EvidenceLimits:
    """Where evidence starts to matter. Defaults follow the simulator's healthy ranges and ISO 14644-1 class 5."""

    ppe_compliance_target: float = 0.95
    cleanroom_iso_class_max: float = 5.0
    cleanroom_min_pressure_pa: float = 5.0
    cleanroom_humidity_range: tuple[float, float] = (30.0, 55.0)
    cleanroom_temperature_range: tuple[float, float] = (19.0, 23.0)
    rul_history_windows: int = 30  # windows of robot rows read to measure each robot's cycle rate


def gather_evidence(
    shift: Shift,
    calendar: ShiftCalendar,
    *,
    store: ServingStore,
    rows_dir: StoragePath,
    horizon_shifts: int = 3,
    limits: EvidenceLimits | None = None,
    now: datetime | None = None,
) -> ShiftEvidence:
    """The evidence for `shift`'s backlog, as known at its start; `rows_dir` holds <kind>/<window>.parquet."""
    limits = limits or EvidenceLimits()
    previous = calendar.shift_at(shift.start - timedelta(seconds=1))
    next_shifts = calendar.following(shift, horizon_shifts)
    since, until = previous.start, shift.start
    items: list[EvidenceItem] = []
    notes: list[str] = []

    def collect(what: str, reader: Any, *args: Any) -> None:
        try:
            items.extend(reader(*args))
        except Exception as exc:  # one unreadable source leaves the others' evidence
            log.warning("backlog evidence: %s unreadable: %s", what, exc)
            notes.append(f"{what} not read: {type(exc).__name__}: {exc}"[:300])

    horizon_end = next_shifts[-1].end if next_shifts else shift.end
    collect("RUL predictions", _rul_items, store, rows_dir, shift, horizon_end, limits)
    collect("open alerts", _alert_items, AlertBook(store.engine), shift.start)
    window_predictions = _predictions_between(store, since, until, notes)
    collect("energy anomalies", _anomaly_items, window_predictions.get(ENERGY_MODEL, []), EvidenceKind.ENERGY_ANOMALY)
    collect("cyber anomalies", _anomaly_items, window_predictions.get(CYBER_MODEL, []), EvidenceKind.CYBER_ANOMALY)
    collect("safety hazards", _hazard_items, window_predictions.get(SAFETY_MODEL, []))
    collect("PPE compliance", _ppe_items, window_predictions.get(PPE_MODEL, []), limits)
    collect("cleanroom readings", _cleanroom_items, rows_dir / "cleanrooms", since, until, limits)
    return ShiftEvidence(
        shift=shift,
        next_shifts=next_shifts,
        gathered_at=now or utc_now(),
        items=sorted(items, key=lambda item: (item.kind.value, item.asset_id, item.evidence_id)),
        notes=notes,
    )


def _predictions_between(
    store: ServingStore, since: datetime, until: datetime, notes: list[str]
) -> dict[str, list[Prediction]]:
    by_model: dict[str, list[Prediction]] = {}
    for model in (ENERGY_MODEL, CYBER_MODEL, SAFETY_MODEL, PPE_MODEL):
        try:
            by_model[model] = _all_predictions(store, model, since, until)
        except Exception as exc:  # noted like any other unreadable source
            notes.append(f"{model} predictions not read: {type(exc).__name__}: {exc}"[:300])
    return by_model


def _all_predictions(store: ServingStore, model: str, since: datetime, until: datetime) -> list[Prediction]:
    found: list[Prediction] = []
    page_size = 5000
    while True:
        page = store.prediction_history(model_name=model, start=since, end=until, limit=page_size, offset=len(found))
        found.extend(page.items)
        if len(found) >= page.total or not page.items:
            return found


# ---- RUL: robots whose interval reaches into the horizon ----------------------------------


def _rul_items(
    store: ServingStore, rows_dir: StoragePath, shift: Shift, horizon_end: datetime, limits: EvidenceLimits
) -> list[EvidenceItem]:
    latest = store.latest_predictions(model_name=RUL_MODEL, since=shift.start - timedelta(days=1), before=shift.start)
    if not latest:
        return []
    rates = robot_cycle_rates(rows_dir / "robots", up_to=shift.start, windows=limits.rul_history_windows)
    items = []
    for prediction in latest:
        extra = prediction.model_extra or {}
        lower, upper = float(extra.get("rul_lower", prediction.score)), float(extra.get("rul_upper", prediction.score))
        rate = rates.get(prediction.asset_id)
        observed = prediction.window_end or prediction.produced_at
        facts: dict[str, Any] = {
            "rul_cycles": round(prediction.score, 1),
            "rul_lower_cycles": round(lower, 1),
            "rul_upper_cycles": round(upper, 1),
            "confidence": extra.get("confidence"),
            "model_version": prediction.model_version,
        }
        if rate:
            lower_at = observed + timedelta(hours=lower / rate)
            facts |= {"cycles_per_hour": round(rate, 1), "lower_end_reached_at": lower_at.isoformat()}
            if lower_at > horizon_end:
                continue
            when = f"its interval's lower end ({lower:.0f} cycles) is reached at {lower_at:%Y-%m-%d %H:%M} UTC"
        elif prediction.label != "rul_low":
            continue  # no cycle rate to place it in time, and the model does not call it low
        else:
            when = f"its interval's lower end is {lower:.0f} cycles (cycle rate unknown)"
        items.append(
            EvidenceItem(
                evidence_id=prediction.prediction_id,
                kind=EvidenceKind.RUL,
                asset_id=prediction.asset_id,
                observed_at=observed,
                summary=f"{prediction.asset_id}: RUL {prediction.score:.0f} cycles ({lower:.0f}-{upper:.0f}); {when}",
                facts=facts,
            )
        )
    return items


def robot_cycle_rates(robot_rows_dir: StoragePath, *, up_to: datetime, windows: int) -> dict[str, float]:
    """Cycles per hour per robot, from the robot rows of the last `windows` windows before `up_to`."""
    paths = _window_files(robot_rows_dir, until=up_to)[-windows:]
    if not paths:
        return {}
    rows = pl.concat([read_parquet(p, columns=["asset_id", "ts", "cycle_count"]) for p in paths])
    spans = (
        rows.drop_nulls()
        .group_by("asset_id")
        .agg(
            (pl.col("cycle_count").max() - pl.col("cycle_count").min()).alias("cycles"),
            ((pl.col("ts").max() - pl.col("ts").min()).dt.total_seconds() / 3600).alias("hours"),
        )
        .filter((pl.col("hours") > 0) & (pl.col("cycles") > 0))
    )
    return {row["asset_id"]: row["cycles"] / row["hours"] for row in spans.iter_rows(named=True)}


# ---- alerts open at the shift's start ------------------------------------------------------


def _alert_items(book: AlertBook, at: datetime) -> list[EvidenceItem]:
    return [_alert_item(alert, at) for alert in book.open_at(at, limit=ALERT_SCAN)]


def _alert_item(alert: AlertRecord, at: datetime) -> EvidenceItem:
    # Acknowledged by the shift's start: a later acknowledgement was not there for a backfilled shift.
    acknowledged = alert.acknowledged_at is not None and alert.acknowledged_at <= at
    facts: dict[str, Any] = {
        "type": alert.type,
        "severity": alert.severity.value,
        "source": alert.source,
        "count": alert.count,
        "acknowledged": acknowledged,
        "first_seen": alert.first_seen.isoformat(),
    }
    if alert.plan is not None:
        facts |= {
            "plan_action": alert.plan.action,
            "plan_priority": alert.plan.priority,
            "plan_owner_role": alert.plan.owner_role,
            "plan_due_at": alert.plan.due_at.isoformat(),
            "plan_summary": alert.plan.summary,
        }
    related = [alert.lineage.prediction_id] if alert.lineage.prediction_id else []
    return EvidenceItem(
        evidence_id=alert.alert_id,
        kind=EvidenceKind.ALERT,
        asset_id=alert.asset_id or alert.source,
        observed_at=alert.last_seen,
        summary=f"{alert.severity.value} {alert.type} on {alert.asset_id or alert.source}: {alert.message}"
        + (" (acknowledged)" if acknowledged else " (not acknowledged)"),
        facts=facts,
        related_ids=related,
    )


# ---- anomalies and hazards during the last shift -------------------------------------------


def _flagged(predictions: Iterable[Prediction], normal_labels: Sequence[str]) -> dict[str, list[Prediction]]:
    by_asset: dict[str, list[Prediction]] = {}
    for prediction in predictions:
        if prediction.label not in normal_labels:
            by_asset.setdefault(prediction.asset_id, []).append(prediction)
    return by_asset


def _folded_item(kind: EvidenceKind, asset_id: str, flagged: list[Prediction], total: int, what: str) -> EvidenceItem:
    """One item per asset: the worst prediction is the evidence, the others are related ids."""
    flagged = sorted(flagged, key=lambda p: (-p.score, p.window_key))
    worst = flagged[0]
    labels = sorted({p.label for p in flagged})
    extra = worst.model_extra or {}
    facts: dict[str, Any] = {
        "flagged_windows": len(flagged),
        "scored_windows": total,
        "worst_score": round(worst.score, 4),
        "labels": labels,
        "model_version": worst.model_version,
    }
    facts |= {name: extra[name] for name in ("threshold", "attack_type", "zone") if name in extra}
    return EvidenceItem(
        evidence_id=worst.prediction_id,
        kind=kind,
        asset_id=asset_id,
        observed_at=worst.window_end or worst.produced_at,
        summary=f"{asset_id}: {what} in {len(flagged)} of {total} windows last shift (worst score {worst.score:.3f})",
        facts=facts,
        related_ids=[p.prediction_id for p in flagged[1 : 1 + MAX_RELATED]],
    )


def _anomaly_items(predictions: list[Prediction], kind: EvidenceKind) -> list[EvidenceItem]:
    totals = _count_by_asset(predictions)
    what = "power-consumption anomaly" if kind == EvidenceKind.ENERGY_ANOMALY else "attack or network anomaly"
    return [
        _folded_item(kind, asset, flagged, totals[asset], what)
        for asset, flagged in sorted(_flagged(predictions, ("normal",)).items())
    ]


def _hazard_items(predictions: list[Prediction]) -> list[EvidenceItem]:
    items = []
    for zone, zone_predictions in sorted(_by_zone(predictions).items()):
        high = [p for p in zone_predictions if p.label == "high"]
        if high:
            items.append(
                _folded_item(EvidenceKind.SAFETY_HAZARD, zone, high, len(zone_predictions), "high hazard risk")
            )
    return items


def _by_zone(predictions: Iterable[Prediction]) -> dict[str, list[Prediction]]:
    """Predictions per plant zone (their `zone` field; the asset when they carry none)."""
    by_zone: dict[str, list[Prediction]] = {}
    for prediction in predictions:
        zone = str((prediction.model_extra or {}).get("zone") or prediction.asset_id)
        by_zone.setdefault(zone, []).append(prediction)
    return by_zone


def _count_by_asset(predictions: Iterable[Prediction]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for prediction in predictions:
        counts[prediction.asset_id] = counts.get(prediction.asset_id, 0) + 1
    return counts


def _ppe_items(predictions: list[Prediction], limits: EvidenceLimits) -> list[EvidenceItem]:
    """PPE compliance per zone (frames without a violation / frames seen); every zone seen is evidence."""
    items = []
    for zone, zone_predictions in sorted(_by_zone(predictions).items()):
        frames = sum(int((p.model_extra or {}).get("frames", 1)) for p in zone_predictions)
        violating = sum(
            int((p.model_extra or {}).get("frames_in_violation", p.label == "violation")) for p in zone_predictions
        )
        compliance = 1.0 - violating / frames if frames else 1.0
        worst = max(zone_predictions, key=lambda p: (p.score, p.window_key))
        flagged = sorted((p for p in zone_predictions if p.label == "violation"), key=lambda p: -p.score)
        evidence = flagged[0] if flagged else worst
        items.append(
            EvidenceItem(
                evidence_id=evidence.prediction_id,
                kind=EvidenceKind.PPE_COMPLIANCE,
                asset_id=zone,
                observed_at=evidence.window_end or evidence.produced_at,
                summary=f"zone {zone}: PPE compliance {compliance:.0%} over {frames} frames last shift "
                f"(target {limits.ppe_compliance_target:.0%})",
                facts={
                    "compliance": round(compliance, 4),
                    "frames": frames,
                    "frames_in_violation": violating,
                    "target": limits.ppe_compliance_target,
                    "cameras": sorted({p.asset_id for p in zone_predictions}),
                },
                related_ids=[p.prediction_id for p in flagged[1 : 1 + MAX_RELATED]],
            )
        )
    return items


# ---- cleanroom excursions -------------------------------------------------------------------


def _window_files(directory: StoragePath, *, until: datetime, since: datetime | None = None) -> list[StoragePath]:
    """Typed-row files of windows that started in [since, until), oldest first (names sort by time)."""
    chosen = []
    for path in parquet_files(directory):
        try:
            start = window_start(path.stem)
        except WindowKeyError:
            continue
        if start < until and (since is None or start >= since):
            chosen.append(path)
    return chosen


def _cleanroom_items(
    directory: StoragePath, since: datetime, until: datetime, limits: EvidenceLimits
) -> list[EvidenceItem]:
    paths = _window_files(directory, since=since, until=until)
    if not paths:
        return []
    rows = pl.concat([read_parquet(p) for p in paths], how="vertical_relaxed")
    low_h, high_h = limits.cleanroom_humidity_range
    low_t, high_t = limits.cleanroom_temperature_range
    breaches = {
        "iso_class": pl.col("iso_class") > limits.cleanroom_iso_class_max,
        "differential_pressure_pa": pl.col("differential_pressure_pa") < limits.cleanroom_min_pressure_pa,
        "humidity": ~pl.col("humidity").is_between(low_h, high_h),
        "temperature": ~pl.col("temperature").is_between(low_t, high_t),
    }
    flagged = rows.with_columns(
        [expr.fill_null(False).alias(f"breach_{name}") for name, expr in breaches.items()]
    ).filter(pl.any_horizontal([pl.col(f"breach_{name}") for name in breaches]))
    items = []
    for (asset_id,), readings in flagged.group_by("asset_id", maintain_order=True):
        windows = readings.group_by("window_key").len().sort("len", "window_key", descending=True)
        worst_window = windows["window_key"][0]
        broken = [name for name in breaches if readings[f"breach_{name}"].any()]
        last = readings.sort("ts")[-1]
        items.append(
            EvidenceItem(
                evidence_id=f"cleanrooms/{worst_window}/{asset_id}",
                kind=EvidenceKind.CLEANROOM_EXCURSION,
                asset_id=str(asset_id),
                observed_at=last["ts"][0],
                summary=f"{asset_id}: {readings.height} readings out of limits last shift ({', '.join(broken)})",
                facts={
                    "readings_out_of_limits": readings.height,
                    "readings": rows.filter(pl.col("asset_id") == asset_id).height,
                    "limits_broken": broken,
                    "worst_iso_class": _rounded(readings["iso_class"].max()),
                    "lowest_pressure_pa": _rounded(readings["differential_pressure_pa"].min()),
                    "highest_humidity": _rounded(readings["humidity"].max()),
                    "iso_class_limit": limits.cleanroom_iso_class_max,
                },
                related_ids=[f"cleanrooms/{key}/{asset_id}" for key in windows["window_key"][1 : 1 + MAX_RELATED]],
            )
        )
    return sorted(items, key=lambda item: item.asset_id)


def _rounded(value: Any) -> float | None:
    return None if value is None else round(float(value), 2)
