"""Typed rows of one payload kind from a sealed window: the first step of every model's pipeline.

A sealed window holds every accepted message as JSON (`windows.WINDOW_SCHEMA`). Each model reads
the kind it cares about, validated against the contract model for that kind and flattened into
a typed frame. The collector validated every row already, so a row that fails here means the
contract drifted: it is counted and reported, never raised. Redelivered rows (same asset_id and
seq) are kept once; rows without seq are all kept, as the contract says.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args

import polars as pl
from pydantic import BaseModel, ValidationError

from factory_pipelines.telemetry import (
    PARTICLE_SIZES_UM,
    CameraFrame,
    CleanroomStatus,
    InboundTelemetry,
    PayloadKind,
    RobotTelemetry,
    SafetyReading,
)

CONTRACT_BY_KIND: dict[str, type[BaseModel]] = {
    model.model_fields["kind"].default: model for model in get_args(InboundTelemetry)
}


@dataclass(frozen=True, slots=True)
class TypedRows:
    frame: pl.DataFrame
    invalid_rows: int
    duplicate_rows: int
    invalid_reasons: list[str] = field(default_factory=list)


def type_rows(
    window: pl.DataFrame,
    window_key: str,
    kind: PayloadKind,
    schema: dict[str, pl.DataType],
    flatten: Callable[[Any], dict[str, Any]],
) -> TypedRows:
    """The `kind` rows of `window` validated and flattened by `flatten` into `schema`.

    `schema` must start with window_key, asset_id, ts and seq; `flatten` gives the other columns.
    """
    contract = CONTRACT_BY_KIND[kind.value]
    records: list[dict[str, Any]] = []
    reasons: list[str] = []
    invalid = 0
    rows = window.filter(pl.col("kind") == kind.value)
    for asset_id, ts, seq, payload in rows.select("asset_id", "ts", "seq", "payload").iter_rows():
        try:
            data = json.loads(payload) if payload else {}
            data.update(asset_id=asset_id, ts=ts, seq=seq, kind=kind.value)
            reading = contract.model_validate(data)
        except (ValueError, ValidationError) as exc:
            invalid += 1
            if len(reasons) < 5:
                reasons.append(f"{asset_id}/{seq}: {str(exc).splitlines()[0]}")
            continue
        envelope = {"window_key": window_key, "asset_id": asset_id, "ts": reading.ts, "seq": reading.seq}  # type: ignore[attr-defined]
        records.append({**envelope, **flatten(reading)})
    frame = pl.DataFrame(records, schema=schema)
    first_delivery = pl.col("seq").is_null() | pl.struct("asset_id", "seq").is_first_distinct()
    deduplicated = frame.filter(first_delivery).sort("asset_id", "ts", "seq", nulls_last=True)
    return TypedRows(deduplicated, invalid, frame.height - deduplicated.height, reasons)


ENVELOPE_SCHEMA: dict[str, pl.DataType] = {
    "window_key": pl.String(),
    "asset_id": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
    "seq": pl.Int64(),
}

# ---- robots: RobotTelemetry with the vibration features flattened -------------------------

VIBRATION_FIELDS: tuple[str, ...] = ("rms", "kurtosis", "bpfo", "bpfi", "bsf", "ftf")
ROBOT_ROWS_SCHEMA: dict[str, pl.DataType] = {
    **ENVELOPE_SCHEMA,
    "cycle_count": pl.Int64(),
    "temperature": pl.Float64(),
    "motor_current": pl.Float64(),
    "health_score": pl.Float64(),
    **{f"vibration_{name}": pl.Float64() for name in VIBRATION_FIELDS},
    "state": pl.String(),
    "true_rul_cycles": pl.Float64(),
}


def _flatten_robot(reading: RobotTelemetry) -> dict[str, Any]:
    vibration = reading.vibration
    return {
        "cycle_count": reading.cycle_count,
        "temperature": reading.temperature,
        "motor_current": reading.motor_current,
        "health_score": reading.health_score,
        **{f"vibration_{name}": getattr(vibration, name) if vibration else None for name in VIBRATION_FIELDS},
        "state": reading.state,
        "true_rul_cycles": reading.true_rul_cycles,
    }


def robot_rows(window: pl.DataFrame, window_key: str) -> TypedRows:
    return type_rows(window, window_key, PayloadKind.ROBOT, ROBOT_ROWS_SCHEMA, _flatten_robot)


# ---- cameras: one JPEG frame per row --------------------------------------------------------

CAMERA_ROWS_SCHEMA: dict[str, pl.DataType] = {
    **ENVELOPE_SCHEMA,
    "zone": pl.String(),
    "image_jpeg_b64": pl.String(),
    "width": pl.Int64(),
    "height": pl.Int64(),
    "true_violation": pl.Boolean(),
    "worker_id": pl.String(),
}


def _flatten_camera(frame: CameraFrame) -> dict[str, Any]:
    return {
        "zone": frame.zone or frame.asset_id,
        "image_jpeg_b64": frame.image_jpeg_b64,
        "width": frame.width,
        "height": frame.height,
        "true_violation": frame.true_violation,
        "worker_id": frame.worker_id,
    }


def camera_rows(window: pl.DataFrame, window_key: str) -> TypedRows:
    return type_rows(window, window_key, PayloadKind.CAMERA_FRAME, CAMERA_ROWS_SCHEMA, _flatten_camera)


# ---- safety stations: one zone's sensors per row ---------------------------------------------

SAFETY_FLOAT_FIELDS: tuple[str, ...] = ("gas_ppm", "noise_db", "temperature", "proximity_m")
SAFETY_COUNT_FIELDS: tuple[str, ...] = ("ppe_violations", "workers")
SAFETY_ROWS_SCHEMA: dict[str, pl.DataType] = {
    **ENVELOPE_SCHEMA,
    "zone": pl.String(),
    **{name: pl.Float64() for name in SAFETY_FLOAT_FIELDS},
    **{name: pl.Int64() for name in SAFETY_COUNT_FIELDS},
    "true_hazard": pl.Boolean(),
}


def _flatten_safety(reading: SafetyReading) -> dict[str, Any]:
    return {
        "zone": reading.zone or reading.asset_id,
        **{name: getattr(reading, name) for name in (*SAFETY_FLOAT_FIELDS, *SAFETY_COUNT_FIELDS)},
        "true_hazard": reading.true_hazard,
    }


def safety_rows(window: pl.DataFrame, window_key: str) -> TypedRows:
    return type_rows(window, window_key, PayloadKind.SAFETY, SAFETY_ROWS_SCHEMA, _flatten_safety)


# ---- cleanrooms: particle counts by size and the room's climate ------------------------------

CLEANROOM_ROWS_SCHEMA: dict[str, pl.DataType] = {
    **ENVELOPE_SCHEMA,
    **{f"particles_{size.replace('.', '_')}um": pl.Float64() for size in PARTICLE_SIZES_UM},
    "iso_class": pl.Float64(),
    "temperature": pl.Float64(),
    "humidity": pl.Float64(),
    "differential_pressure_pa": pl.Float64(),
}


def _flatten_cleanroom(status: CleanroomStatus) -> dict[str, Any]:
    counts = status.particles_per_m3 or {}
    return {
        **{f"particles_{size.replace('.', '_')}um": counts.get(size) for size in PARTICLE_SIZES_UM},
        "iso_class": status.iso_class,
        "temperature": status.temperature,
        "humidity": status.humidity,
        "differential_pressure_pa": status.differential_pressure_pa,
    }


def cleanroom_rows(window: pl.DataFrame, window_key: str) -> TypedRows:
    return type_rows(window, window_key, PayloadKind.CLEANROOM, CLEANROOM_ROWS_SCHEMA, _flatten_cleanroom)
