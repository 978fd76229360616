"""Robots and cleanroom: the live picture from MQTT, RUL from the store, and commands to assets.

- `GET /api/robots`, `GET /api/robots/{id}`: every robot this API's site has seen on MQTT (its
  latest `RobotTelemetry`, held by `serving.live.LiveTelemetry`) plus every robot with a recent
  `rul_lstm` prediction in the store, each with a health score, its RUL interval and a
  maintenance priority.
- `POST /api/robots/{id}/command` (operator): recorded in the store, then published QoS 1 on
  `factory/{site}/{id}/cmd`; the asset's `CommandAck` on its telemetry topic settles it, and
  `GET /api/commands/{id}` shows the answer.
- `GET /api/cleanroom/status`: the latest cleanroom readings checked against their limits.
- `GET /api/telemetry/latest`: the latest reading per asset and kind.

Health score (0-100): the device's own `health_score` when it sends one (the simulator's and the
earlier robots' firmware do). Otherwise it is derived from what the robot measures: 100 minus
penalties that grow linearly between a healthy and a failing value and are capped at a weight:
vibration RMS 0.1 g to 1.0 g (up to 50 points), vibration kurtosis 3.5 to 10 (up to 20 points,
impacts from a spalled race raise it before the RMS moves), bearing temperature 45 degC to 80 degC
(up to 30 points). With none of the three it is null. `health_source` says which applies.

Maintenance priority: the more urgent of two verdicts.
- RUL, on the lower end of the latest `rul_lstm` interval (the worst case; the score itself when a
  prediction carries no interval), in cycles: below 200 `critical` (replace now: the alert rule
  `rul_low`), below 600 `high` (plan the change: `rul_declining`), below 1200 `medium`.
- Health: below 30 `critical`, below 50 `high`, below 70 `medium`.
`low` when at least one of them is known and neither is urgent; `unknown` when neither is known.

Commands. A command goes only to an asset the API knows (a robot as above, or any asset whose
telemetry it has seen on this site, since machines obey stop/slow/resume too); others are a 404.
It is recorded before it is published, so nothing moves without an audit trail (store down:
503, nothing sent). When the broker cannot take it (not connected, or no PUBACK within
`COMMAND_PUBLISH_TIMEOUT_S`) the answer is a 503 problem carrying the `command_id`, and the
command stays recorded as `unanswered` with the reason: the caller was told it failed, and an
operator reading the command log sees the attempt. Nothing is queued to be sent later; if a late
ack arrives after all (the broker got it but its PUBACK was lost), the ack wins. A `sent` command
with no ack within `COMMAND_ACK_TIMEOUT_S` is shown (and stored) as `unanswered` the next time it
is read. See `factory_pipelines.command_book` for acks of commands nobody recorded.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from pydantic import BaseModel, Field

from factory_pipelines.api_keys import Principal
from factory_pipelines.backlog_evidence import RUL_MODEL, EvidenceLimits
from factory_pipelines.command_book import CommandBook, CommandRecord, CommandStatus
from factory_pipelines.telemetry import (
    CleanroomStatus,
    Command,
    PayloadKind,
    Prediction,
    RobotTelemetry,
    command_topic,
    dump_payload,
    utc_now,
)
from serving.access import Operator
from serving.context import ServingContext, get_context
from serving.datetimes import IsoDatetime
from serving.live import LatestReading, LiveStatus, LiveTelemetry
from serving.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Offset, next_offset
from serving.problems import NOT_FOUND, ProblemError, problem_response, problem_responses
from serving.ttl_cache import TtlCache

router = APIRouter(tags=["robots"])

BROKER_UNAVAILABLE = "urn:factory-pipelines:problem:broker-unavailable"
BROKER_RETRY_AFTER_S = 5
COMMAND_PUBLISH_TIMEOUT_S = 5.0
COMMAND_ACK_TIMEOUT_S = 60.0
ROBOT_OFFLINE_AFTER_S = 30.0  # robots publish about once a second; silence this long means offline
RUL_LOOKBACK = timedelta(days=7)  # older RUL predictions describe a bearing that has run on since
RUL_CACHE_TTL_S = 2.0  # RUL predictions come once per window (about a minute): re-read at most this often

# Health: (healthy value, failing value, most points it may cost); see the module docstring.
VIBRATION_RMS_PENALTY = (0.1, 1.0, 50.0)
KURTOSIS_PENALTY = (3.5, 10.0, 20.0)
TEMPERATURE_PENALTY = (45.0, 80.0, 30.0)

Priority = Literal["critical", "high", "medium", "low", "unknown"]

# Priority cuts: (below this, priority). RUL cuts follow alert_rules.yaml's rul_low / rul_declining.
RUL_LOWER_CUTS: tuple[tuple[float, Priority], ...] = ((200.0, "critical"), (600.0, "high"), (1200.0, "medium"))
HEALTH_CUTS: tuple[tuple[float, Priority], ...] = ((30.0, "critical"), (50.0, "high"), (70.0, "medium"))
PRIORITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3, "unknown": 4}

HealthSource = Literal["device", "derived"]
AssetIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^/#+]+$", description="The asset id.")]


# ---- the live feed (the context's) and the RUL snapshot, one per app ----

_RUL_LOCK = threading.Lock()
_RUL_ATTR = "fleet_rul_cache"


def live_of(app: FastAPI) -> LiveTelemetry:
    """The app's live feed (held by its ServingContext), started on first use."""
    context: ServingContext = app.state.serving
    context.live.start()
    return context.live


async def live_for(request: Request) -> LiveTelemetry:
    """FastAPI dependency: the live feed of the app serving this request."""
    return live_of(request.app)


@dataclass(frozen=True, slots=True)
class RulSnapshot:
    by_robot: dict[str, Prediction]
    error: str | None = None


def _rul_snapshot(app: FastAPI) -> RulSnapshot:
    """The latest rul_lstm prediction per robot, read at most every RUL_CACHE_TTL_S; a store outage is a value."""
    cache: TtlCache[str, RulSnapshot] | None = getattr(app.state, _RUL_ATTR, None)
    if cache is None:
        with _RUL_LOCK:
            cache = getattr(app.state, _RUL_ATTR, None)
            if cache is None:
                context: ServingContext = app.state.serving

                def load(_key: str) -> RulSnapshot:
                    try:
                        rows = context.store.use(
                            lambda store: store.latest_predictions(model_name=RUL_MODEL, since=utc_now() - RUL_LOOKBACK)
                        )
                    except Exception as exc:  # the live picture is still worth showing without RUL
                        return RulSnapshot({}, f"RUL predictions not read: {exc}"[:300])
                    return RulSnapshot({p.asset_id: p for p in rows})

                cache = TtlCache(load, RUL_CACHE_TTL_S)
                setattr(app.state, _RUL_ATTR, cache)
    return cache.get(RUL_MODEL)


# ---- health and priority ----


def _penalty(value: float | None, rule: tuple[float, float, float]) -> float | None:
    if value is None:
        return None
    good, bad, weight = rule
    return weight * min(1.0, max(0.0, (value - good) / (bad - good)))


def derived_health_score(reading: RobotTelemetry) -> float | None:
    """Health from vibration RMS, kurtosis and temperature (see the module docstring); None without any."""
    vibration = reading.vibration
    penalties = [
        _penalty(vibration.rms if vibration else None, VIBRATION_RMS_PENALTY),
        _penalty(vibration.kurtosis if vibration else None, KURTOSIS_PENALTY),
        _penalty(reading.temperature, TEMPERATURE_PENALTY),
    ]
    known = [p for p in penalties if p is not None]
    return round(max(0.0, 100.0 - sum(known)), 1) if known else None


def health_of(reading: RobotTelemetry | None) -> tuple[float | None, HealthSource | None]:
    if reading is None:
        return None, None
    if reading.health_score is not None:
        return float(reading.health_score), "device"
    derived = derived_health_score(reading)
    return (derived, "derived") if derived is not None else (None, None)


def _cut(value: float | None, cuts: tuple[tuple[float, Priority], ...]) -> Priority | None:
    if value is None:
        return None
    return next((priority for below, priority in cuts if value < below), "low")


def maintenance_priority(rul_lower: float | None, health_score: float | None) -> tuple[Priority, str]:
    """The more urgent of the RUL and health verdicts, and why (see the module docstring)."""
    by_rul, by_health = _cut(rul_lower, RUL_LOWER_CUTS), _cut(health_score, HEALTH_CUTS)
    if by_rul is None and by_health is None:
        return "unknown", "no RUL prediction and no health score yet"
    reasons = []
    if by_rul is not None:
        reasons.append(f"RUL lower bound {rul_lower:.0f} cycles: {by_rul}")
    if by_health is not None:
        reasons.append(f"health {health_score:.0f}/100: {by_health}")
    worst = min((p for p in (by_rul, by_health) if p is not None), key=PRIORITY_RANK.__getitem__)
    return worst, "; ".join(reasons)


# ---- response models ----


class LiveFeed(BaseModel):
    """Whether the API's MQTT feed is up, so a client can tell current readings from stale ones."""

    connected: bool
    subscribed: bool
    accepted: int = Field(description="Messages accepted since the API started.")
    rejected: int = Field(description="Messages the contract refused (skipped).")
    last_message_at: IsoDatetime | None
    last_error: str | None

    @classmethod
    def of(cls, status: LiveStatus) -> LiveFeed:
        return cls(
            connected=status.connected,
            subscribed=status.subscribed,
            accepted=status.accepted,
            rejected=status.rejected,
            last_message_at=status.last_message_at,
            last_error=status.last_error,
        )


class RobotReading(RobotTelemetry):
    """The robot's latest telemetry as it sent it (unknown extra fields kept)."""

    ts: IsoDatetime


class RulEstimate(BaseModel):
    """Remaining useful life of the bearing, in cycles, from the latest rul_lstm prediction."""

    model_config = {"protected_namespaces": ()}

    rul_cycles: float = Field(description="The model's point estimate (the prediction's score).")
    rul_lower: float | None = Field(description="Lower end of the conformal interval.")
    rul_upper: float | None = Field(description="Upper end of the conformal interval.")
    confidence: float | None = Field(description="Coverage the interval was calibrated for, e.g. 0.9.")
    label: str
    model_name: str
    model_version: str
    window_key: str
    window_end: IsoDatetime | None
    produced_at: IsoDatetime
    mlflow_run_id: str | None

    @classmethod
    def of(cls, prediction: Prediction) -> RulEstimate:
        extra = prediction.model_extra or {}

        def number(name: str) -> float | None:
            value = extra.get(name)
            return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        return cls(
            rul_cycles=prediction.score,
            rul_lower=number("rul_lower"),
            rul_upper=number("rul_upper"),
            confidence=number("confidence"),
            label=prediction.label,
            model_name=prediction.model_name,
            model_version=prediction.model_version,
            window_key=prediction.window_key,
            window_end=prediction.window_end,
            produced_at=prediction.produced_at,
            mlflow_run_id=prediction.mlflow_run_id,
        )

    @property
    def worst_case(self) -> float:
        return self.rul_lower if self.rul_lower is not None else self.rul_cycles


class RobotOut(BaseModel):
    robot_id: str
    telemetry: RobotReading | None = Field(description="Latest telemetry; null when only predictions are known.")
    state: str | None = Field(description="running, slow or stopped, as the robot last reported.")
    health_score: float | None = Field(description="0-100; null when nothing it sends tells.")
    health_source: HealthSource | None = Field(description="'device' (sent by the robot) or 'derived' (computed).")
    rul: RulEstimate | None
    maintenance_priority: Priority
    priority_reason: str
    last_seen: IsoDatetime | None = Field(description="When its latest telemetry arrived.")
    online: bool = Field(description=f"Telemetry arrived within the last {ROBOT_OFFLINE_AFTER_S:g} s.")


class RobotList(BaseModel):
    items: list[RobotOut] = Field(description="By robot id.")
    total: int
    limit: int
    offset: int
    next_offset: int | None
    live: LiveFeed
    warnings: list[str] = Field(default_factory=list, description="Sources that could not be read (e.g. the store).")


class RobotDetail(RobotOut):
    live: LiveFeed
    warnings: list[str] = Field(default_factory=list)


class CommandRequest(BaseModel):
    model_config = {"json_schema_extra": {"examples": [{"command": "slow", "parameters": {"factor": 0.5}}]}}

    command: str = Field(min_length=1, max_length=64, description="e.g. stop, slow, resume.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="e.g. {'factor': 0.5} for slow.")


class CommandOut(BaseModel):
    command_id: str
    robot_id: str = Field(description="The asset the command was sent to.")
    command: str
    parameters: dict[str, Any]
    status: CommandStatus = Field(description="sent, done, rejected or unanswered.")
    issued_at: IsoDatetime | None = Field(description="Null for an acknowledgement of a command not sent through us.")
    issued_by: str | None
    acked_at: IsoDatetime | None = Field(description="When the asset's acknowledgement arrived.")
    detail: str | None = Field(description="The asset's answer, or why the command went unanswered.")

    @classmethod
    def of(cls, record: CommandRecord) -> CommandOut:
        return cls(
            command_id=record.command_id,
            robot_id=record.asset_id,
            command=record.command,
            parameters=record.parameters,
            status=record.status,
            issued_at=record.issued_at,
            issued_by=record.issued_by,
            acked_at=record.acked_at,
            detail=record.detail,
        )


class CommandAccepted(CommandOut):
    topic: str = Field(description="Where it was published.")


class LimitCheck(BaseModel):
    name: str
    value: float | None
    limit: str = Field(description="The allowed range, e.g. '<= 5' or '30..55'.")
    ok: bool | None = Field(description="Null when the cleanroom does not measure it.")


class CleanroomReading(BaseModel):
    asset_id: str
    particles_per_m3: dict[str, float] | None = Field(description="Counts per m3 at or above each size (um).")
    iso_class: float | None
    temperature: float | None
    humidity: float | None
    differential_pressure_pa: float | None
    ts: IsoDatetime = Field(description="Measurement time (receipt time when the device sends none).")
    last_seen: IsoDatetime = Field(description="When the reading arrived.")
    within_limits: bool | None = Field(description="All measured values within limits; null when none is measured.")
    checks: list[LimitCheck]
    violations: list[str]


class CleanroomLimits(BaseModel):
    iso_class_max: float
    min_pressure_pa: float
    humidity_range: tuple[float, float]
    temperature_range: tuple[float, float]


class CleanroomOverview(BaseModel):
    status: Literal["ok", "out_of_limits", "no_data"]
    cleanrooms: list[CleanroomReading]
    limits: CleanroomLimits
    live: LiveFeed


class TelemetryItem(BaseModel):
    kind: PayloadKind
    asset_id: str
    topic: str
    received_at: IsoDatetime
    reading: dict[str, Any] = Field(
        description="The payload as the contract reads it (wire names, absent fields left out)."
    )


class TelemetryLatest(BaseModel):
    items: list[TelemetryItem] = Field(description="By kind, then asset.")
    total: int
    limit: int
    offset: int
    next_offset: int | None
    live: LiveFeed


# ---- robots ----


def _robot_out(robot_id: str, reading: LatestReading | None, prediction: Prediction | None, now: datetime) -> RobotOut:
    telemetry = reading.model if reading is not None and isinstance(reading.model, RobotTelemetry) else None
    health, source = health_of(telemetry)
    rul = RulEstimate.of(prediction) if prediction is not None else None
    priority, reason = maintenance_priority(rul.worst_case if rul else None, health)
    last_seen = reading.received_at if reading is not None else None
    return RobotOut(
        robot_id=robot_id,
        telemetry=RobotReading.model_validate(telemetry.model_dump()) if telemetry is not None else None,
        state=telemetry.state if telemetry is not None else None,
        health_score=health,
        health_source=source,
        rul=rul,
        maintenance_priority=priority,
        priority_reason=reason,
        last_seen=last_seen,
        online=last_seen is not None and (now - last_seen).total_seconds() <= ROBOT_OFFLINE_AFTER_S,
    )


def _warnings(snapshot: RulSnapshot) -> list[str]:
    return [snapshot.error] if snapshot.error else []


def fleet_robots(app: FastAPI, live: LiveTelemetry) -> tuple[list[RobotOut], RulSnapshot]:
    """Every robot, by id, as `GET /api/robots` lists them (also the WebSocket hub's `init`)."""
    now = utc_now()
    readings = {r.asset_id: r for r in live.latest(kind=PayloadKind.ROBOT)}
    snapshot = _rul_snapshot(app)
    robots = [
        _robot_out(robot_id, readings.get(robot_id), snapshot.by_robot.get(robot_id), now)
        for robot_id in sorted(readings.keys() | snapshot.by_robot.keys())
    ]
    return robots, snapshot


def robot_detail(app: FastAPI, live: LiveTelemetry, robot_id: str) -> RobotDetail:
    """One robot as `GET /api/robots/{id}` answers it (also the WebSocket hub's `robot_update`); 404 problem."""
    reading = live.reading(PayloadKind.ROBOT, robot_id)
    snapshot = _rul_snapshot(app)
    prediction = snapshot.by_robot.get(robot_id)
    if reading is None and prediction is None:
        raise _unknown_asset(robot_id, snapshot)
    robot = _robot_out(robot_id, reading, prediction, utc_now())
    return RobotDetail(**robot.model_dump(), live=LiveFeed.of(live.status()), warnings=_warnings(snapshot))


@router.get(
    "/api/robots",
    summary="Every robot: latest telemetry, health, RUL and maintenance priority",
    response_model=RobotList,
    responses=problem_responses(401, 422),
)
async def list_robots(
    request: Request,
    live: Annotated[LiveTelemetry, Depends(live_for)],
    priority: Annotated[Priority | None, Query(description="Only robots with this maintenance priority.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    offset: Offset = 0,
) -> Response:
    """Robots seen on MQTT plus robots with a RUL prediction of the last week, by robot id.

    When the store cannot be read the live robots are still listed, without RUL, and `warnings` says so.
    Answers may be up to a second old (the WebSocket `/ws` streams every change as it happens).
    """

    def answer() -> bytes:
        robots, snapshot = fleet_robots(request.app, live)
        if priority is not None:
            robots = [r for r in robots if r.maintenance_priority == priority]
        page = robots[offset : offset + limit]
        return (
            RobotList(
                items=page,
                total=len(robots),
                limit=limit,
                offset=offset,
                next_offset=next_offset(offset, len(page), len(robots)),
                live=LiveFeed.of(live.status()),
                warnings=_warnings(snapshot),
            )
            .model_dump_json()
            .encode()
        )

    context: ServingContext = request.app.state.serving
    body = await context.answers.answer(("api/robots", priority, limit, offset), answer)
    return Response(body, media_type="application/json")


@router.get(
    "/api/robots/{robot_id}",
    summary="One robot: latest telemetry, health, RUL and maintenance priority",
    response_model=RobotDetail,
    responses=problem_responses(401, 404, 422),
)
def get_robot(
    robot_id: AssetIdPath, request: Request, live: Annotated[LiveTelemetry, Depends(live_for)]
) -> RobotDetail:
    return robot_detail(request.app, live, robot_id)


def _unknown_asset(asset_id: str, snapshot: RulSnapshot) -> ProblemError:
    detail = f"no robot {asset_id!r}: no telemetry from it on this site and no recent RUL prediction"
    if snapshot.error:
        detail += f" ({snapshot.error})"
    return ProblemError(404, detail, type_=NOT_FOUND)


# ---- commands ----


@router.post(
    "/api/robots/{robot_id}/command",
    summary="Send a command (stop, slow, resume, ...) to a robot",
    status_code=202,
    response_model=CommandAccepted,
    responses=problem_responses(401, 403, 404, 422, 503),
)
def send_command(
    robot_id: AssetIdPath,
    body: CommandRequest,
    caller: Operator,
    request: Request,
    context: Annotated[ServingContext, Depends(get_context)],
    live: Annotated[LiveTelemetry, Depends(live_for)],
) -> Any:
    """Recorded, then published QoS 1 on `factory/{site}/{robot_id}/cmd`; 202 once the broker has it.

    The asset's acknowledgement settles it: follow `GET /api/commands/{command_id}`. Broker
    unavailable: 503 with the `command_id`, recorded as `unanswered` (nothing is sent later).
    """
    try:
        return issue_command(request.app, context, live, robot_id, body, caller)
    except CommandNotDelivered as exc:
        return problem_response(
            request,
            503,
            detail=str(exc),
            type_=BROKER_UNAVAILABLE,
            title="MQTT broker unavailable",
            headers={"Retry-After": str(BROKER_RETRY_AFTER_S)},
            command_id=exc.command_id,
            command_status=CommandStatus.UNANSWERED.value,
        )


class CommandNotDelivered(Exception):
    """The broker did not take a recorded command; it stays recorded as `unanswered`."""

    def __init__(self, command_id: str, reason: str) -> None:
        super().__init__(f"command {command_id} recorded as unanswered: {reason}")
        self.command_id = command_id


def issue_command(
    app: FastAPI, context: ServingContext, live: LiveTelemetry, robot_id: str, body: CommandRequest, caller: Principal
) -> CommandAccepted:
    """Record, then publish a command (the REST route's and the WebSocket hub's); blocks up to the publish timeout.

    Raises a 404 ProblemError for an unknown asset, StoreUnavailableError when it cannot be
    recorded (nothing sent), CommandNotDelivered when the broker did not take it.
    """
    snapshot = _rul_snapshot(app)
    if not live.latest(asset_id=robot_id) and robot_id not in snapshot.by_robot:
        raise _unknown_asset(robot_id, snapshot)
    command = Command(
        command_id=uuid.uuid4().hex,
        command=body.command,
        parameters=body.parameters,
        issued_by=caller.name,
    )
    record = context.store.use(lambda store: CommandBook(store.engine).record_issued(robot_id, command))
    topic = command_topic(context.settings.site, robot_id)
    try:
        live.publish(topic, dump_payload(command), timeout=COMMAND_PUBLISH_TIMEOUT_S)
    except (ConnectionError, TimeoutError) as exc:
        reason = f"not delivered: {exc}"
        context.store.use(lambda store: CommandBook(store.engine).mark_unanswered(command.command_id, reason))
        raise CommandNotDelivered(command.command_id, str(exc)) from exc
    return CommandAccepted(**CommandOut.of(record).model_dump(), topic=topic)


@router.get(
    "/api/commands/{command_id}",
    summary="A command with its status and the asset's acknowledgement",
    response_model=CommandOut,
    responses=problem_responses(401, 404, 422, 503),
)
def get_command(
    command_id: Annotated[str, Path(min_length=1, max_length=64)],
    context: Annotated[ServingContext, Depends(get_context)],
) -> CommandOut:
    """`sent` until the asset answers; `unanswered` once COMMAND_ACK_TIMEOUT_S passed without an answer."""

    def read(book: CommandBook) -> CommandRecord | None:
        record = book.get(command_id)
        if record is not None and record.status == CommandStatus.SENT and record.issued_at is not None:
            cutoff = utc_now() - timedelta(seconds=COMMAND_ACK_TIMEOUT_S)
            if record.issued_at < cutoff and book.expire_unanswered(cutoff, command_id=command_id):
                record = book.get(command_id)
        return record

    record = context.store.use(lambda store: read(CommandBook(store.engine)))
    if record is None:
        raise ProblemError(404, f"no command {command_id!r}", type_=NOT_FOUND)
    return CommandOut.of(record)


# ---- cleanroom ----


def _range_check(name: str, value: float | None, low: float | None, high: float | None) -> LimitCheck:
    if low is not None and high is not None:
        limit = f"{low:g}..{high:g}"
    elif high is not None:
        limit = f"<= {high:g}"
    else:
        limit = f">= {low:g}"
    ok = None if value is None else (low is None or value >= low) and (high is None or value <= high)
    return LimitCheck(name=name, value=value, limit=limit, ok=ok)


def cleanroom_reading(reading: LatestReading, limits: EvidenceLimits) -> CleanroomReading:
    """One cleanroom's latest reading checked against the backlog's limits (EvidenceLimits)."""
    status = reading.model
    assert isinstance(status, CleanroomStatus)
    checks = [
        _range_check("iso_class", status.iso_class, None, limits.cleanroom_iso_class_max),
        _range_check(
            "differential_pressure_pa", status.differential_pressure_pa, limits.cleanroom_min_pressure_pa, None
        ),
        _range_check("humidity", status.humidity, *limits.cleanroom_humidity_range),
        _range_check("temperature", status.temperature, *limits.cleanroom_temperature_range),
    ]
    measured = [c for c in checks if c.ok is not None]
    return CleanroomReading(
        asset_id=status.asset_id,
        particles_per_m3=status.particles_per_m3,
        iso_class=status.iso_class,
        temperature=status.temperature,
        humidity=status.humidity,
        differential_pressure_pa=status.differential_pressure_pa,
        ts=status.ts,
        last_seen=reading.received_at,
        within_limits=all(c.ok for c in measured) if measured else None,
        checks=checks,
        violations=[f"{c.name} {c.value:g} outside {c.limit}" for c in measured if not c.ok],
    )


@router.get(
    "/api/cleanroom/status",
    summary="Latest cleanroom readings and whether they are within limits",
    response_model=CleanroomOverview,
    responses=problem_responses(401),
)
def cleanroom_status(live: Annotated[LiveTelemetry, Depends(live_for)]) -> CleanroomOverview:
    """Particles by size, ISO class, temperature, humidity and pressure of each cleanroom of the site.

    Limits are the backlog's (ISO 14644-1 class 5, at least 5 Pa overpressure, 30-55 % RH, 19-23 degC).
    """
    limits = EvidenceLimits()
    rooms = [cleanroom_reading(r, limits) for r in live.latest(kind=PayloadKind.CLEANROOM)]
    if not rooms:
        status: Literal["ok", "out_of_limits", "no_data"] = "no_data"
    elif any(room.within_limits is False for room in rooms):
        status = "out_of_limits"
    else:
        status = "ok"
    return CleanroomOverview(
        status=status,
        cleanrooms=rooms,
        limits=CleanroomLimits(
            iso_class_max=limits.cleanroom_iso_class_max,
            min_pressure_pa=limits.cleanroom_min_pressure_pa,
            humidity_range=limits.cleanroom_humidity_range,
            temperature_range=limits.cleanroom_temperature_range,
        ),
        live=LiveFeed.of(live.status()),
    )


# ---- any telemetry ----


def telemetry_item(reading: LatestReading) -> TelemetryItem:
    """One reading as `GET /api/telemetry/latest` lists it (also the WebSocket hub's `telemetry` event)."""
    return TelemetryItem(
        kind=reading.kind,
        asset_id=reading.asset_id,
        topic=reading.topic,
        received_at=reading.received_at,
        reading=reading.model.model_dump(mode="json", by_alias=True, exclude_none=True),
    )


@router.get(
    "/api/telemetry/latest",
    summary="Latest reading per asset and kind",
    response_model=TelemetryLatest,
    responses=problem_responses(401, 422),
)
def latest_telemetry(
    live: Annotated[LiveTelemetry, Depends(live_for)],
    kind: Annotated[PayloadKind | None, Query(description="Only this kind, e.g. robot, machine, cleanroom.")] = None,
    asset_id: Annotated[str | None, Query(max_length=128, description="Only this asset.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    offset: Offset = 0,
) -> TelemetryLatest:
    """What arrived last from each asset on this site since the API started (it keeps no history)."""
    readings = live.latest(kind=kind, asset_id=asset_id)
    page = readings[offset : offset + limit]
    return TelemetryLatest(
        items=[telemetry_item(r) for r in page],
        total=len(readings),
        limit=limit,
        offset=offset,
        next_offset=next_offset(offset, len(page), len(readings)),
        live=LiveFeed.of(live.status()),
    )
