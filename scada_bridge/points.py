"""The bridge's point list: every value a SCADA system can read, derived from the telemetry contract.

One source of truth for the Modbus register map, the OPC UA address space and a DNP3 point list:
each of them walks `POINTS` (or `point_list()`) and never names a field itself.

- Telemetry points come from the numeric fields of the contract's payload models (`RobotTelemetry`
  with its `VibrationFeatures`, `MachineTelemetry`, `CleanroomStatus`, `SafetyReading`), found by
  iterating the pydantic fields, so a field added to the contract becomes a point. Fields only the
  simulator knows (`true_*`, ground truth) are left out. A few text fields that take a fixed set of
  values (a robot's `state`, a machine's operation mode and efficiency status) become code points.
- Engineering units come from the contract's description when it ends with one in parentheses
  ("Motor current (A)."), otherwise from `UNITS`, a small table keyed by field name.
- Prediction points come per model of the catalog: the score, the label as a code, and the family's
  own numeric fields (`rul_lstm`: `rul_lower`, `rul_upper`).
- Alert points count an asset's open alerts per severity (INFO, WARNING, CRITICAL).

A point's key is a slash-separated path, e.g. `robot/vibration/rms`, `prediction/rul_lstm/score`,
`alerts/open_critical`: unique, stable, and ready to become OPC UA folders.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from factory_pipelines.model_catalog import CATALOG
from factory_pipelines.telemetry import (
    EFFICIENCY_STATUSES,
    OPERATION_MODES,
    PARTICLE_SIZES_UM,
    CleanroomStatus,
    MachineTelemetry,
    PayloadKind,
    Prediction,
    RobotTelemetry,
    SafetyReading,
    Severity,
)


class PointGroup(StrEnum):
    TELEMETRY = "telemetry"
    PREDICTION = "prediction"
    ALERTS = "alerts"


class ValueKind(StrEnum):
    """How a point's number is meant: a measurement, a whole count, or a code from `Point.codes`."""

    ANALOG = "analog"
    COUNT = "count"
    CODE = "code"


UNKNOWN_CODE = -1.0  # a text value outside a code point's table (a new label, a new state)

# The telemetry payloads that carry points, by the `kind` each one has on the wire.
TELEMETRY_MODELS: dict[PayloadKind, type[BaseModel]] = {
    PayloadKind.ROBOT: RobotTelemetry,
    PayloadKind.MACHINE: MachineTelemetry,
    PayloadKind.CLEANROOM: CleanroomStatus,
    PayloadKind.SAFETY: SafetyReading,
}

ENVELOPE_FIELDS = frozenset({"asset_id", "ts", "seq", "kind"})
GROUND_TRUTH_PREFIX = "true_"  # true_rul_cycles, true_hazard: only the simulator knows them

# Engineering units where the contract's description does not end with one, keyed by field name.
UNITS: dict[str, str] = {
    "temperature": "degC",
    "temperature_c": "degC",
    "vibration_hz": "Hz",
    "power_consumption_kw": "kW",
    "network_latency_ms": "ms",
    "packet_loss_pct": "%",
    "quality_control_defect_rate_pct": "%",
    "production_speed_units_per_hr": "units/h",
    "error_rate_pct": "%",
    "bpfo": "g^2",
    "bpfi": "g^2",
    "bsf": "g^2",
    "ftf": "g^2",
    "cycle_count": "cycles",
    "health_score": "%",
    "particles_per_m3": "1/m3",
    "differential_pressure_pa": "Pa",
    "ppe_violations": "people",
    "workers": "people",
}

# Descriptions where the contract has none, keyed by field name.
DESCRIPTIONS: dict[str, str] = {
    "kurtosis": "Vibration kurtosis (about 3 for a healthy bearing, higher with impacts).",
    "cycle_count": "Cycles run since the robot started.",
    "health_score": "Health score the robot reports (0..100).",
    "temperature": "Air temperature.",
    "differential_pressure_pa": "Differential pressure to the neighbouring room.",
}

# Keys of dict-valued numeric fields: each key becomes a point.
DICT_KEYS: dict[str, tuple[str, ...]] = {"particles_per_m3": PARTICLE_SIZES_UM}

# Text fields with a fixed set of values, exposed as codes (index in the tuple).
TEXT_CODES: dict[str, tuple[str, ...]] = {
    "state": ("running", "slow", "stopped"),
    "operation_mode": OPERATION_MODES,
    "efficiency_status": EFFICIENCY_STATUSES,
}


@dataclass(frozen=True, slots=True)
class ModelPoints:
    """What a model's predictions carry besides score and label, and what its score means."""

    score_unit: str
    score_description: str
    labels: tuple[str, ...]
    extras: tuple[tuple[str, str, str], ...] = ()  # (field, unit, description)


PREDICTION_POINTS: dict[str, ModelPoints] = {
    "rul_lstm": ModelPoints(
        "cycles",
        "Remaining useful life estimate.",
        ("normal", "rul_low"),
        (
            ("rul_lower", "cycles", "Lower end of the calibrated RUL interval."),
            ("rul_upper", "cycles", "Upper end of the calibrated RUL interval."),
        ),
    ),
    "energy_iforest": ModelPoints(
        "", "Isolation-forest anomaly score (about 0.5 ordinary, near 1 anomalous).", ("normal", "anomaly")
    ),
    "cyber_detector": ModelPoints("", "Probability of a network attack (0..1).", ("normal", "attack")),
    "safety_hazard": ModelPoints("", "Calibrated hazard probability of the zone (0..1).", ("low", "medium", "high")),
    "ppe_vision": ModelPoints(
        "", "Probability of a hard-hat or vest violation in view (0..1).", ("compliant", "violation")
    ),
}
_GENERIC_MODEL = ModelPoints("", "Model score.", ())

ALERT_SEVERITIES: tuple[Severity, ...] = (Severity.INFO, Severity.WARNING, Severity.CRITICAL)


@dataclass(frozen=True, slots=True)
class Point:
    """One value of an asset a SCADA system can read."""

    key: str
    group: PointGroup
    source: str  # payload kind (robot, machine, ...), model name, or "alerts"
    path: tuple[str, ...]  # where the value sits in its payload (or the severity, for alert points)
    unit: str
    description: str
    kind: ValueKind = ValueKind.ANALOG
    codes: Mapping[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The last part of the key: the variable's name inside its source folder."""
        return self.key.rsplit("/", 1)[-1]

    def code_of(self, text: Any) -> float:
        """The code of a text value; UNKNOWN_CODE for a value outside the table."""
        return float(self.codes.get(str(text), UNKNOWN_CODE))


def _unit_in_description(description: str | None) -> str | None:
    """The unit a contract description ends with, e.g. 'Sound level, A-weighted (dB(A)).' -> 'dB(A)'."""
    text = (description or "").strip().rstrip(".").rstrip()
    if not text.endswith(")"):
        return None
    depth = 0
    for index in range(len(text) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(text[index], 0)
        if depth == 0:
            return text[index + 1 : -1].strip() or None
    return None


def _bare_annotation(annotation: Any) -> Any:
    """`float | None` -> float; anything else is returned as it is."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _field_points(source: str, path: tuple[str, ...], name: str, info: FieldInfo) -> list[Point]:
    annotation = _bare_annotation(info.annotation)
    key_path = (*path, name)
    unit = _unit_in_description(info.description) or UNITS.get(name, "")
    fallback = f"Plant export column {info.alias}." if info.alias else f"{name.replace('_', ' ').capitalize()}."
    description = info.description or DESCRIPTIONS.get(name) or fallback
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_points(source, key_path, annotation)
    if annotation is bool:
        return []
    if annotation in (float, int):
        kind = ValueKind.COUNT if annotation is int else ValueKind.ANALOG
        return [Point("/".join((source, *key_path)), PointGroup.TELEMETRY, source, key_path, unit, description, kind)]
    if typing.get_origin(annotation) is dict and name in DICT_KEYS:
        return [
            Point(
                "/".join((source, *key_path, key)),
                PointGroup.TELEMETRY,
                source,
                (*key_path, key),
                unit,
                f"{description} Size >= {key} um.",
            )
            for key in DICT_KEYS[name]
        ]
    if annotation is str and name in TEXT_CODES:
        codes = {text: index for index, text in enumerate(TEXT_CODES[name])}
        table = ", ".join(f"{index} {text}" for text, index in codes.items())
        return [
            Point(
                "/".join((source, *key_path)),
                PointGroup.TELEMETRY,
                source,
                key_path,
                "",
                f"{description} Code: {table}; {UNKNOWN_CODE:g} other.",
                ValueKind.CODE,
                codes,
            )
        ]
    return []


def _model_points(source: str, path: tuple[str, ...], model: type[BaseModel]) -> list[Point]:
    points: list[Point] = []
    for name, info in model.model_fields.items():
        if (not path and name in ENVELOPE_FIELDS) or name.startswith(GROUND_TRUTH_PREFIX):
            continue
        points.extend(_field_points(source, path, name, info))
    return points


def telemetry_points() -> list[Point]:
    """Every numeric field of the telemetry payloads that carry points, in contract order."""
    return [point for kind, model in TELEMETRY_MODELS.items() for point in _model_points(kind.value, (), model)]


def prediction_points(model_names: tuple[str, ...] | None = None) -> list[Point]:
    """Score, label code and the family's own fields for each model of the catalog."""
    points: list[Point] = []
    for model_name in model_names if model_names is not None else tuple(CATALOG):
        spec = PREDICTION_POINTS.get(model_name, _GENERIC_MODEL)
        prefix = f"prediction/{model_name}"
        points.append(
            Point(
                f"{prefix}/score",
                PointGroup.PREDICTION,
                model_name,
                ("score",),
                spec.score_unit,
                spec.score_description,
            )
        )
        codes = {label: index for index, label in enumerate(spec.labels)}
        table = ", ".join(f"{index} {label}" for label, index in codes.items()) or "none known"
        points.append(
            Point(
                f"{prefix}/label",
                PointGroup.PREDICTION,
                model_name,
                ("label",),
                "",
                f"The model's label as a code: {table}; {UNKNOWN_CODE:g} other.",
                ValueKind.CODE,
                codes,
            )
        )
        for name, unit, description in spec.extras:
            points.append(Point(f"{prefix}/{name}", PointGroup.PREDICTION, model_name, (name,), unit, description))
    return points


def alert_points() -> list[Point]:
    return [
        Point(
            f"alerts/open_{severity.value.lower()}",
            PointGroup.ALERTS,
            "alerts",
            (severity.value,),
            "alerts",
            f"Open (not cleared) {severity.value} alerts of the asset.",
            ValueKind.COUNT,
        )
        for severity in ALERT_SEVERITIES
    ]


def point_list() -> tuple[Point, ...]:
    """Telemetry, then prediction, then alert points; keys are unique."""
    points = (*telemetry_points(), *prediction_points(), *alert_points())
    keys = [p.key for p in points]
    duplicates = {k for k in keys if keys.count(k) > 1}
    if duplicates:
        raise ValueError(f"duplicate point keys: {sorted(duplicates)}")
    return points


POINTS: tuple[Point, ...] = point_list()
POINTS_BY_KEY: dict[str, Point] = {p.key: p for p in POINTS}


# ---- reading points out of payloads ----------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if isinstance(data, BaseModel):
            fields = type(data).model_fields
            data = getattr(data, part) if part in fields else (data.model_extra or {}).get(part)
        elif isinstance(data, Mapping):
            data = data.get(part)
        else:
            return None
        if data is None:
            return None
    return data


def _point_value(point: Point, data: Any) -> float | None:
    raw = _lookup(data, point.path)
    if raw is None:
        return None
    if point.kind == ValueKind.CODE:
        return point.code_of(raw)
    return _number(raw)


def telemetry_values(
    kind: PayloadKind | str, payload: BaseModel, points: tuple[Point, ...] = POINTS
) -> dict[str, float]:
    """Key -> value of every point this payload carries (fields the device did not send are absent)."""
    source = PayloadKind(kind).value
    values: dict[str, float] = {}
    for point in points:
        if point.group == PointGroup.TELEMETRY and point.source == source:
            value = _point_value(point, payload)
            if value is not None:
                values[point.key] = value
    return values


def prediction_values(prediction: Prediction, points: tuple[Point, ...] = POINTS) -> dict[str, float]:
    """Key -> value of the prediction points of its model; the family's fields come from the payload's extras."""
    data = {**(prediction.model_extra or {}), "score": prediction.score, "label": prediction.label}
    values: dict[str, float] = {}
    for point in points:
        if point.group == PointGroup.PREDICTION and point.source == prediction.model_name:
            value = _point_value(point, data)
            if value is not None:
                values[point.key] = value
    return values


def is_good_number(value: float) -> bool:
    """NaN and infinities are readings a SCADA system cannot use: their quality is bad."""
    return math.isfinite(value)
