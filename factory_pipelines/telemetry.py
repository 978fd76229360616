"""The telemetry contract: every MQTT payload model and every topic, in one module.

This module is the single source of truth for what flows over MQTT. The JSON schemas served at
`GET /schemas` are generated from these models.

Our own publishers stamp every message with `asset_id`, `ts` (UTC) and a per-publisher `seq`.
Devices already in the plant send less (see SEED-CLIENTS.md), and are accepted all the same:
the asset id comes from the topic, `ts` from the time of receipt, fields a device does not
measure are absent, and unknown extra fields are kept.
"""

from __future__ import annotations

import json
import math
import reprlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)


def _as_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 and 9999-12-31T23:59-01:00 have no UTC datetime
        raise ValueError("the time is out of range once converted to UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_as_utc)]


def utc_now() -> datetime:
    return datetime.now(UTC)


def first_seq() -> int:
    """Where a publisher's `seq` starts: now in epoch microseconds, so a restarted publisher never
    reuses a (asset_id, seq) the collector may still remember."""
    return time.time_ns() // 1000


class PayloadKind(StrEnum):
    MACHINE = "machine"
    ROBOT = "robot"
    CLEANROOM = "cleanroom"
    COMMAND_ACK = "command_ack"
    MAINTENANCE = "maintenance"
    ENERGY_STATS = "energy_stats"
    NETWORK_STATS = "network_stats"
    SAFETY = "safety"
    CAMERA_FRAME = "camera_frame"


class Severity(StrEnum):
    INFO = "INFO"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"


INT64_MAX = 2**63 - 1
"""Every integer of the contract fits the Int64 columns windows are typed into; a larger one is refused
at the collector rather than failing the window's typed rows later."""


class _Envelope(BaseModel):
    """Fields every telemetry message carries once it has been accepted."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, ser_json_inf_nan="constants")

    asset_id: str = Field(min_length=1, max_length=128)
    ts: UtcDatetime = Field(description="Measurement time (UTC); the time of receipt when a device sends none.")
    seq: int | None = Field(
        None, ge=0, le=INT64_MAX, description="Per-publisher sequence; (asset_id, seq) makes delivery idempotent."
    )


# ---- machines: the plant's historical export layout (manufacturing_6G_dataset.csv) ----

MACHINE_EXPORT_COLUMNS: tuple[str, ...] = (
    "Timestamp",
    "Machine_ID",
    "Operation_Mode",
    "Temperature_C",
    "Vibration_Hz",
    "Power_Consumption_kW",
    "Network_Latency_ms",
    "Packet_Loss_%",
    "Quality_Control_Defect_Rate_%",
    "Production_Speed_units_per_hr",
    "Predictive_Maintenance_Score",
    "Error_Rate_%",
    "Efficiency_Status",
)

OPERATION_MODES = ("Active", "Idle", "Maintenance")
EFFICIENCY_STATUSES = ("High", "Medium", "Low")


def _number_as_text(value: object) -> object:
    """The export writes ids as numbers: 7, 7.0 and 7e0 all become "7", whichever parser read them.

    pydantic's own coercion would write the JSON parser's text ("1e3", "NaN") on one path and
    Python's `str` ("1000.0", "nan") on the other; NaN and infinities name nothing, so they are refused.
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a number given for text must be finite")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class MachineTelemetry(_Envelope):
    """One row of the plant export; field aliases are the export's column names."""

    kind: Literal["machine"] = "machine"
    machine_id: str | None = Field(None, alias="Machine_ID")
    operation_mode: str | None = Field(None, alias="Operation_Mode")
    temperature_c: float | None = Field(None, alias="Temperature_C")
    vibration_hz: float | None = Field(None, alias="Vibration_Hz")
    power_consumption_kw: float | None = Field(None, alias="Power_Consumption_kW")
    network_latency_ms: float | None = Field(None, alias="Network_Latency_ms")
    packet_loss_pct: float | None = Field(None, alias="Packet_Loss_%")
    quality_control_defect_rate_pct: float | None = Field(None, alias="Quality_Control_Defect_Rate_%")
    production_speed_units_per_hr: float | None = Field(None, alias="Production_Speed_units_per_hr")
    predictive_maintenance_score: float | None = Field(None, alias="Predictive_Maintenance_Score")
    error_rate_pct: float | None = Field(None, alias="Error_Rate_%")
    efficiency_status: str | None = Field(None, alias="Efficiency_Status")

    _text_from_numbers = field_validator(
        "asset_id", "machine_id", "operation_mode", "efficiency_status", mode="before"
    )(_number_as_text)


# Export column name -> model field name, derived from the model so the two cannot drift.
MACHINE_FIELD_BY_COLUMN: dict[str, str] = {
    field.alias: name for name, field in MachineTelemetry.model_fields.items() if field.alias is not None
}
MACHINE_NUMERIC_FIELDS: tuple[str, ...] = tuple(
    name
    for name, field in MachineTelemetry.model_fields.items()
    if field.alias is not None and field.annotation == (float | None)
)


# ---- robots: vibration features of the bearing, temperature, current, cycles ----


class VibrationFeatures(BaseModel):
    """Vibration summary; band energies are at the bearing fault frequencies."""

    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants")  # as the envelope: inf stays inf

    rms: float | None = Field(None, ge=0, description="Vibration RMS (g).")
    kurtosis: float | None = None
    bpfo: float | None = Field(None, ge=0, description="Band energy at the ball-pass frequency, outer race.")
    bpfi: float | None = Field(None, ge=0, description="Band energy at the ball-pass frequency, inner race.")
    bsf: float | None = Field(None, ge=0, description="Band energy at the ball spin frequency.")
    ftf: float | None = Field(None, ge=0, description="Band energy at the fundamental train (cage) frequency.")


def fill_from_earlier_names(
    data: Any, earlier: Mapping[str, str], convert: Mapping[str, Callable[[Any], Any]] | None = None
) -> Any:
    """A payload with each contract field it lacks taken from the earlier devices' name for it.

    `earlier` maps a contract field to the earlier name; only a plain number is taken (converted
    by `convert[field]` when given), and the earlier names stay in the payload as sent.
    """
    if not isinstance(data, dict):
        return data
    filled = {
        field: (convert or {}).get(field, lambda value: value)(data[name])
        for field, name in earlier.items()
        if data.get(field) is None and isinstance(data.get(name), int | float) and not isinstance(data[name], bool)
    }
    return {**data, **filled} if filled else data


class RobotTelemetry(_Envelope):
    """A robot's reading. The earlier robots' names are read too (and kept as sent): `cycles` as the
    cycle count, `current` as the motor current (A)."""

    kind: Literal["robot"] = "robot"
    vibration: VibrationFeatures | None = None
    temperature: float | None = Field(None, description="Bearing temperature (degC).")
    motor_current: float | None = Field(None, ge=0, description="Motor current (A).")
    cycle_count: int | None = Field(None, ge=0, le=INT64_MAX)
    health_score: float | None = Field(None, ge=0, le=100)
    state: str | None = Field(None, description="running, slow or stopped.")
    true_rul_cycles: float | None = Field(
        None, description="Ground-truth remaining useful life; only the simulator knows it."
    )

    @model_validator(mode="before")
    @classmethod
    def _earlier_names(cls, data: Any) -> Any:
        return fill_from_earlier_names(data, {"cycle_count": "cycles", "motor_current": "current"})


# ---- cleanroom ----

PARTICLE_SIZES_UM = ("0.3", "0.5", "1.0", "5.0")


LEGACY_PARTICLE_SIZE_UM = "0.5"
"""The size the earlier cleanroom devices' single `particles` count is taken at: ISO 14644-1's reference size."""


class CleanroomStatus(_Envelope):
    """A cleanroom's reading. The earlier devices' names are read too (and kept as sent): `particles`, one
    count per m3, as the count at >= 0.5 um; `pressure` as the differential pressure (Pa)."""

    kind: Literal["cleanroom"] = "cleanroom"
    particles_per_m3: dict[str, float] | None = Field(
        None, description="Particle counts per cubic metre at or above each size in micrometres."
    )
    iso_class: float | None = Field(None, ge=1, le=9, description="ISO 14644-1 class.")
    temperature: float | None = None
    humidity: float | None = Field(None, ge=0, le=100, description="Relative humidity (%).")
    differential_pressure_pa: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _earlier_names(cls, data: Any) -> Any:
        return fill_from_earlier_names(
            data,
            {"particles_per_m3": "particles", "differential_pressure_pa": "pressure"},
            convert={"particles_per_m3": lambda count: {LEGACY_PARTICLE_SIZE_UM: count}},
        )


# ---- legacy device payloads (SEED-CLIENTS.md, "MQTT that existing devices use") ----


class MaintenanceReading(_Envelope):
    kind: Literal["maintenance"] = "maintenance"
    vibration: float | None = None
    temperature: float | None = None


class EnergyStats(_Envelope):
    kind: Literal["energy_stats"] = "energy_stats"
    current_load: float | None = None


class NetworkStats(_Envelope):
    kind: Literal["network_stats"] = "network_stats"
    latency: float | None = None
    packet_loss: float | None = None


# ---- safety: zone sensors and PPE cameras ----


class SafetyReading(_Envelope):
    """One reading of a zone's safety sensors (asset id: the zone's sensor station)."""

    kind: Literal["safety"] = "safety"
    zone: str | None = Field(None, description="Plant zone the station watches; defaults to the asset id.")
    gas_ppm: float | None = Field(None, ge=0, description="Combustible / toxic gas concentration (ppm).")
    noise_db: float | None = Field(None, ge=0, description="Sound level, A-weighted (dB(A)).")
    temperature: float | None = Field(None, description="Air temperature (degC).")
    proximity_m: float | None = Field(None, ge=0, description="Closest person to moving machinery (m).")
    ppe_violations: int | None = Field(None, ge=0, le=INT64_MAX, description="People without hard hat or vest in view.")
    workers: int | None = Field(None, ge=0, le=INT64_MAX, description="People in the zone.")
    true_hazard: bool | None = Field(None, description="Ground truth of a hazard episode; only the simulator knows it.")


MAX_FRAME_B64_CHARS = 200_000


class CameraFrame(_Envelope):
    """One JPEG frame of a PPE camera, base64 in the payload (keep frames small: a few kB)."""

    kind: Literal["camera_frame"] = "camera_frame"
    zone: str | None = None
    image_jpeg_b64: str = Field(min_length=4, max_length=MAX_FRAME_B64_CHARS, description="JPEG bytes, base64.")
    width: int | None = Field(None, gt=0, le=INT64_MAX)
    height: int | None = Field(None, gt=0, le=INT64_MAX)
    worker_id: str | None = Field(
        None,
        max_length=128,
        description="The worker the camera's tracker named in the frame (PPE compliance is also kept per worker).",
    )
    true_violation: bool | None = Field(
        None, description="Ground truth: someone in the frame lacks a hard hat or vest; only the simulator knows it."
    )


# ---- commands and their acknowledgement ----


class Command(BaseModel):
    """Sent on `factory/{site}/{asset_id}/cmd`."""

    model_config = ConfigDict(extra="allow")

    command_id: str = Field(min_length=1)
    command: str = Field(min_length=1, description="e.g. stop, slow, resume")
    parameters: dict[str, Any] = Field(default_factory=dict)
    issued_at: UtcDatetime = Field(default_factory=utc_now)
    issued_by: str | None = None


class CommandAck(_Envelope):
    """An asset's answer to a command, published on its telemetry topic."""

    kind: Literal["command_ack"] = "command_ack"
    command_id: str
    command: str
    status: Literal["done", "rejected"]
    detail: str | None = None


InboundTelemetry = (
    MachineTelemetry
    | RobotTelemetry
    | CleanroomStatus
    | CommandAck
    | MaintenanceReading
    | EnergyStats
    | NetworkStats
    | SafetyReading
    | CameraFrame
)
TelemetryPayload = Annotated[
    InboundTelemetry,
    Field(discriminator="kind"),
]
_TELEMETRY_ADAPTER: TypeAdapter[Any] = TypeAdapter(TelemetryPayload)


# ---- outputs of the platform ----


class Prediction(BaseModel):
    """A model's verdict on one asset in one window; published on `predictions/{model}/{asset_id}`."""

    model_config = ConfigDict(protected_namespaces=(), extra="allow")

    model_name: str
    model_version: str = Field(description="Registered MLflow model version that produced the score.")
    asset_id: str
    window_key: str = Field(description="The sealed data window that was scored.")
    score: float = Field(description="Model score; for anomaly models higher means more anomalous.")
    label: str = Field(description="e.g. normal / anomaly")
    produced_at: UtcDatetime
    window_start: UtcDatetime | None = None
    window_end: UtcDatetime | None = None
    mlflow_run_id: str | None = None
    dagster_run_id: str | None = None

    @property
    def prediction_id(self) -> str:
        """Stable id of this prediction: the store keeps one per model, window and asset."""
        return f"{self.model_name}/{self.window_key}/{self.asset_id}"


class Alert(BaseModel):
    """Published on `alerts/{severity}` and `factory/{site}/{asset_id}/alerts`."""

    model_config = ConfigDict(extra="allow")

    alert_id: str
    severity: Severity
    source: str
    type: str
    asset_id: str | None = None
    message: str
    ts: UtcDatetime = Field(default_factory=utc_now)
    window_key: str | None = None
    model_name: str | None = None
    model_version: str | None = None


PUBLISHED_MODELS: dict[str, type[BaseModel]] = {
    "MachineTelemetry": MachineTelemetry,
    "RobotTelemetry": RobotTelemetry,
    "CleanroomStatus": CleanroomStatus,
    "MaintenanceReading": MaintenanceReading,
    "EnergyStats": EnergyStats,
    "NetworkStats": NetworkStats,
    "SafetyReading": SafetyReading,
    "CameraFrame": CameraFrame,
    "Command": Command,
    "CommandAck": CommandAck,
    "Prediction": Prediction,
    "Alert": Alert,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON schema of every payload, keyed by model name (served at `GET /schemas`)."""
    return {name: model.model_json_schema(by_alias=True) for name, model in PUBLISHED_MODELS.items()}


# ---- topics ----


def telemetry_topic(site: str, asset_id: str) -> str:
    return f"factory/{site}/{asset_id}/telemetry"


def command_topic(site: str, asset_id: str) -> str:
    return f"factory/{site}/{asset_id}/cmd"


def asset_alert_topic(site: str, asset_id: str) -> str:
    return f"factory/{site}/{asset_id}/alerts"


def backlog_topic(site: str) -> str:
    """Each shift's backlog when it is written (retained: a new subscriber gets the current one)."""
    return f"backlog/{site}"


LEGACY_BACKLOG_TOPIC = "backlogs/shift_backlog"
"""Where the earlier backlog agent published; consumers built for it still subscribe (SEED-CLIENTS.md)."""


def cleanroom_topic(site: str) -> str:
    return f"cleanroom/{site}/status"


def prediction_topic(model_name: str, asset_id: str) -> str:
    return f"predictions/{model_name}/{asset_id}"


def alert_topic(severity: Severity | str) -> str:
    return f"alerts/{Severity(severity).value.lower()}"


# What the collector subscribes to: all telemetry, legacy device topics and the cleanroom.
COLLECTOR_SUBSCRIPTIONS: tuple[str, ...] = ("factory/#", "cleanroom/#")

LEGACY_MACHINE_SITE = "machine"  # seed devices publish factory/machine/{Machine_ID}/...


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What a topic tells about a message: which site and asset, and what kind it must be."""

    site: str
    asset_id: str
    kind: PayloadKind | None  # None: decided by the payload's shape


class TopicError(ValueError):
    pass


def parse_telemetry_topic(topic: str, default_site: str = "main") -> TopicInfo | None:
    """Classify an inbound topic; None for topics that carry no telemetry (cmd, alerts).

    Raises TopicError for topics under our prefixes that fit no known layout.
    """
    parts = topic.split("/")
    if parts[0] == "cleanroom" and len(parts) == 3 and parts[2] == "status" and parts[1]:
        return TopicInfo(parts[1], f"cleanroom-{parts[1]}", PayloadKind.CLEANROOM)
    if parts[0] != "factory":
        raise TopicError(f"topic {_short(topic)} is not under factory/ or cleanroom/")
    if len(parts) == 3 and parts[2] == "stats" and parts[1] in {"energy", "network"}:
        kind = PayloadKind.ENERGY_STATS if parts[1] == "energy" else PayloadKind.NETWORK_STATS
        return TopicInfo(default_site, f"plant-{parts[1]}", kind)
    if len(parts) == 4 and parts[1] and parts[2]:
        site, asset_id, leaf = parts[1], parts[2], parts[3]
        if leaf in {"cmd", "alerts"}:
            return None
        if site == LEGACY_MACHINE_SITE:
            if leaf == "telemetry":
                return TopicInfo(default_site, asset_id, PayloadKind.MACHINE)
            if leaf == "maintenance":
                return TopicInfo(default_site, asset_id, PayloadKind.MAINTENANCE)
        elif leaf == "telemetry":
            return TopicInfo(site, asset_id, None)
    raise TopicError(f"topic {_short(topic)} fits no telemetry layout of the contract")


def _infer_kind(payload: dict[str, Any]) -> PayloadKind:
    if "kind" in payload:
        return PayloadKind(payload["kind"])
    if "command_id" in payload and "status" in payload:
        return PayloadKind.COMMAND_ACK
    if any(column in payload for column in MACHINE_FIELD_BY_COLUMN) or "Machine_ID" in payload:
        return PayloadKind.MACHINE
    return PayloadKind.ROBOT


_SHORT_REPR = reprlib.Repr()  # keyword arguments to Repr() need Python 3.12
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 80
_SHORT_REPR.maxlist = _SHORT_REPR.maxdict = 4
_SHORT_REPR.maxlevel = 2


def _short(value: object) -> str:
    """repr of something a sender chose, cut short: reasons go to the dead-letter file, one line each."""
    return _SHORT_REPR.repr(value)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


class PayloadError(ValueError):
    """A message that cannot be accepted; `reason` says why, for the dead-letter file."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AcceptedTelemetry:
    """A message that passed the contract, with its wire form (`dump_payload`), which is what gets stored."""

    model: InboundTelemetry
    wire: bytes


def parse_telemetry(
    topic: str,
    raw: bytes,
    *,
    received_at: datetime | None = None,
    default_site: str = "main",
) -> InboundTelemetry | None:
    """Validate one inbound message against the contract, filling what legacy devices omit.

    Returns None for topics that carry no telemetry; raises PayloadError with a reason otherwise,
    and never any other exception, whatever the bytes (tests/test_telemetry_properties.py).
    """
    accepted = accept_telemetry(topic, raw, received_at=received_at, default_site=default_site)
    return None if accepted is None else accepted.model


def accept_telemetry(
    topic: str,
    raw: bytes,
    *,
    received_at: datetime | None = None,
    default_site: str = "main",
) -> AcceptedTelemetry | None:
    """`parse_telemetry`, also handing back the wire form it had to make anyway.

    A payload is accepted only if its validated form can be written back as JSON: a lone UTF-16
    surrogate escape ("\\ud800") or nesting deeper than the serializer goes passes validation
    but could be stored nowhere, so it is rejected here rather than failing later in a writer.
    """
    try:
        info = parse_telemetry_topic(topic, default_site)
    except TopicError as exc:
        raise PayloadError(str(exc)) from exc
    if info is None:
        return None
    return _accept_complete(info, raw) or _accept_any(topic, info, raw, received_at)


def _accept_complete(info: TopicInfo, raw: bytes) -> AcceptedTelemetry | None:
    """The fast path for a payload that already carries everything (as the platform's devices send it).

    pydantic parses the bytes itself, about 4x faster than `json.loads` then `validate_python`.
    None sends the payload down `_accept_any`, which fills what is missing and names every problem;
    for what this accepts both give the same result (tests/test_telemetry_properties.py).
    """
    try:
        model = _TELEMETRY_ADAPTER.validate_json(raw)
    except ValueError:  # ValidationError: incomplete, invalid or not JSON; the general path says which
        return None
    if info.kind is not None and model.kind != info.kind.value:
        return None
    try:
        return AcceptedTelemetry(model, dump_payload(model))
    except ValueError:
        return None


def _accept_any(topic: str, info: TopicInfo, raw: bytes, received_at: datetime | None) -> AcceptedTelemetry:
    """The general path: legacy payloads completed from the topic and the receipt time, or a PayloadError."""
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, over 4300 digits, nesting too deep
        raise PayloadError(f"not valid JSON: {_clip(str(exc))}") from exc
    if not isinstance(payload, dict):
        raise PayloadError(f"payload must be a JSON object, got {type(payload).__name__}")

    payload.setdefault("asset_id", info.asset_id)
    if "ts" not in payload:
        legacy_epoch = payload.get("timestamp")
        if isinstance(legacy_epoch, int | float) and not isinstance(legacy_epoch, bool):
            try:
                payload["ts"] = datetime.fromtimestamp(legacy_epoch, UTC).isoformat()
            except (OverflowError, OSError, ValueError):
                raise PayloadError(f"timestamp {legacy_epoch!r} is not a usable epoch time") from None
        else:
            payload["ts"] = (received_at or utc_now()).isoformat()
    if info.kind is not None:
        if "kind" in payload and payload["kind"] != info.kind.value:
            raise PayloadError(f"payload kind {_short(payload['kind'])} does not match topic {_short(topic)}")
        payload["kind"] = info.kind.value
    else:
        try:
            payload["kind"] = _infer_kind(payload).value
        except ValueError:
            raise PayloadError(f"unknown payload kind {_short(payload.get('kind'))}") from None
    try:
        model = _TELEMETRY_ADAPTER.validate_python(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(_clip(str(part), 80) for part in err['loc']) or '<root>'}: {_clip(err['msg'])}"
            for err in exc.errors()[:5]
        )
        raise PayloadError(f"invalid {payload['kind']} payload: {problems}") from exc
    try:
        wire = dump_payload(model)
    except ValueError as exc:  # PydanticSerializationError: lone surrogates, too deeply nested
        raise PayloadError(f"cannot be stored as JSON: {_clip(str(exc))}") from exc
    return AcceptedTelemetry(model, wire)


def dump_payload(model: BaseModel) -> bytes:
    """The wire form: JSON with the contract's aliases, absent fields left out."""
    return model.model_dump_json(by_alias=True, exclude_none=True).encode()
