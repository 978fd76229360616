"""The earlier per-agent services' paths, served from the store: `GET /api/{agent}/status`, `/history`,
`/health` for pm, energy, cyber, safety and ppe, and `GET /api/orchestrator/status`.

Dashboards built for those services keep working (SEED-CLIENTS.md); each agent is now one model:

| agent | agent_id | model |
| --- | --- | --- |
| pm | pm_agent | rul_lstm |
| energy | energy_agent | energy_iforest |
| cyber | cyber_agent | cyber_detector |
| safety | hazard_agent | safety_hazard |
| ppe | ppe_agent | ppe_vision |

A prediction's `alert_level` and `action` come from the alert rules (`FACTORY_ALERT_RULES_FILE`,
or the shipped `alert_rules.yaml`), so a history entry says what the orchestrator does about it:
no rule fires -> NORMAL and `LOG_ONLY`; otherwise the most severe rule that fires gives the level
(INFO -> CAUTION, WARNING -> WARNING, CRITICAL -> CRITICAL) and its alert type the planner's action
(`planner.template_for`). With the shipped rules: rul_lstm `rul_low` (worst case < 200 cycles) is
CRITICAL / SCHEDULE_MAINTENANCE_NEXT_SHIFT and a worst case under 600 cycles WARNING; energy
`anomaly` WARNING / ADJUST_POWER_PROFILE; cyber `attack` by (D)DoS CRITICAL /
ISOLATE_NETWORK_SEGMENT, other attacks WARNING / INSPECT_NETWORK_TRAFFIC; safety risk `high`
CRITICAL and `medium` WARNING / EVACUATE_ZONE; ppe `violation` CRITICAL / STOP_MACHINE_IMMEDIATE.
EMERGENCY comes only from alerts raised with that level (`POST /alert`).

An agent's `status` is the worst of its latest prediction per asset and its open alerts (those
its model's rules raised, plus those sent with its agent_id as source): NORMAL or CAUTION ->
`active`, WARNING -> `warning`, CRITICAL -> `critical`, EMERGENCY -> `emergency` for safety
(`critical` for the others, which never had that status); `initializing` before its first prediction.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.convertors import Convertor, register_url_convertor

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.alert_model import SEVERITY_RANK, AlertRecord
from factory_pipelines.alert_rules import RuleBook, load_rules
from factory_pipelines.planner import template_for
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import PayloadKind, Prediction, Severity, utc_now
from serving.alerts import AlertOut
from serving.context import ServingContext, get_context
from serving.datetimes import IsoDatetime
from serving.live import LatestReading
from serving.paging import MAX_PAGE_SIZE
from serving.predictions import PredictionOut
from serving.problems import problem_responses

log = logging.getLogger(__name__)

router = APIRouter(tags=["agents"])

STARTED_AT = time.monotonic()  # imported when the app is built: the API's start, for `uptime`
RECENT_PREDICTIONS = 10  # entries of `prediction_history` in a status, and what its latency averages over
DEFAULT_HISTORY = 10  # the earlier agents' default for `?limit`
NO_ACTION = "LOG_ONLY"
_RULES_STATE_KEY = "agent_rule_book"


class AgentName(StrEnum):
    PM = "pm"
    ENERGY = "energy"
    CYBER = "cyber"
    SAFETY = "safety"
    PPE = "ppe"


@dataclass(frozen=True, slots=True)
class AgentSpec:
    agent_id: str
    model_name: str


AGENTS: dict[AgentName, AgentSpec] = {
    AgentName.PM: AgentSpec("pm_agent", "rul_lstm"),
    AgentName.ENERGY: AgentSpec("energy_agent", "energy_iforest"),
    AgentName.CYBER: AgentSpec("cyber_agent", "cyber_detector"),
    AgentName.SAFETY: AgentSpec("hazard_agent", "safety_hazard"),
    AgentName.PPE: AgentSpec("ppe_agent", "ppe_vision"),
}


class AgentConvertor(Convertor[str]):
    """Matches only agent names, so `/api/{agent}/status` never takes `/api/cleanroom/status` or
    `/api/robots/health` from the routers included after this one (an unknown agent is a 404)."""

    regex = "|".join(agent.value for agent in AgentName)

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: Any) -> str:
        return str(value)


register_url_convertor("factory_agent", AgentConvertor())
AGENT_PATH = "/api/{agent:factory_agent}"


class AlertLevel(StrEnum):
    """The earlier agents' five levels, least severe first."""

    NORMAL = "NORMAL"
    CAUTION = "CAUTION"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"
    EMERGENCY = "EMERGENCY"


LEVEL_RANK: dict[AlertLevel, int] = {level: rank for rank, level in enumerate(AlertLevel)}
LEVEL_OF_SEVERITY: dict[Severity, AlertLevel] = {
    Severity.INFO: AlertLevel.CAUTION,
    Severity.WARNING: AlertLevel.WARNING,
    Severity.CRITICAL: AlertLevel.CRITICAL,
}

AgentStatusName = Literal["initializing", "active", "warning", "critical", "emergency"]


# ---- response models -------------------------------------------------------------------------


class AgentPrediction(PredictionOut):
    """A prediction as the earlier agents listed it: its fields, then what it means and what to do."""

    alert_level: AlertLevel = Field(description="NORMAL unless an alert rule fires on it (see the module notes).")
    alert_type: str | None = Field(None, description="The alert type the most severe firing rule raises, if any.")
    action: str = Field(description="The planner's action code for that alert type; LOG_ONLY when none fires.")
    timestamp: IsoDatetime = Field(description="When the prediction was made (its produced_at).")


class AgentMetrics(BaseModel):
    total_predictions: int
    successful_predictions: int
    failed_predictions: int = Field(description="Always 0: a window that fails to score leaves no prediction.")
    average_latency_ms: float = Field(
        description="Mean of window end -> produced_at over the recent predictions; 0 before the first."
    )


class MaintenanceReadingOut(BaseModel):
    """A machine's latest `factory/machine/{id}/maintenance` reading, as the earlier PM agent took it in."""

    asset_id: str
    vibration: float | None
    temperature: float | None
    ts: IsoDatetime = Field(description="The device's `timestamp`, else the time of receipt.")
    received_at: IsoDatetime


class PmState(BaseModel):
    agent: Literal["pm"] = "pm"
    robots_monitored: int
    robots_rul_low: list[str] = Field(description="Robots whose latest prediction is labelled rul_low.")
    lowest_rul: float | None = Field(description="Smallest latest RUL estimate (cycles), null with no robot.")
    lowest_rul_asset: str | None
    maintenance: list[MaintenanceReadingOut] = Field(
        default_factory=list,
        description="Latest maintenance reading per machine seen on MQTT by this API (earlier devices send them).",
    )


class EnergyState(BaseModel):
    agent: Literal["energy"] = "energy"
    machines_monitored: int
    machines_anomalous: list[str] = Field(description="Machines whose latest window is labelled anomaly.")
    anomaly_share: float = Field(description="Share of the machines whose latest window is anomalous (0 to 1).")


class CyberState(BaseModel):
    agent: Literal["cyber"] = "cyber"
    machines_monitored: int
    machines_under_attack: list[str] = Field(description="Machines whose latest window is labelled attack.")
    attack_types_seen: list[str] = Field(description="Attack types of the recent and latest attack predictions.")


class SafetyState(BaseModel):
    agent: Literal["safety"] = "safety"
    zones_by_risk: dict[str, list[str]] = Field(
        description="Zones by their latest risk level; low, medium and high are always present."
    )


class PpeState(BaseModel):
    agent: Literal["ppe"] = "ppe"
    cameras_monitored: int
    cameras_in_violation: list[str] = Field(description="Cameras whose latest window is labelled violation.")
    compliance_by_zone: dict[str, float] = Field(
        description="Per zone, the share of frames without a violation in its cameras' latest windows (0 to 1)."
    )


CustomState = Annotated[PmState | EnergyState | CyberState | SafetyState | PpeState, Field(discriminator="agent")]


class AgentStatus(BaseModel):
    """The earlier agents' status shape, plus what the platform knows besides."""

    agent_id: str = Field(description="pm_agent, energy_agent, cyber_agent, hazard_agent or ppe_agent.")
    agent: AgentName
    model_name: str
    status: AgentStatusName
    uptime: float = Field(description="Seconds since the API started.")
    predictions_made: int = Field(description="Predictions of the agent's model in the store.")
    errors: int
    last_prediction: AgentPrediction | None
    prediction_history: list[AgentPrediction] = Field(description="The recent predictions, newest last.")
    metrics: AgentMetrics
    custom_state: CustomState
    timestamp: IsoDatetime
    latest: list[PredictionOut] = Field(description="The newest prediction per asset, by asset.")
    model_version: str | None = Field(description="Version behind the most recent of the latest predictions.")
    model_versions: list[str] = Field(description="Every version among the latest predictions (more during a rollout).")
    champion_version: str | None = Field(
        None, description="The registry's champion, for models the API tracks; null when unknown."
    )
    open_alerts: list[AlertOut] = Field(description="Open alerts of the agent's model or agent_id, most recent first.")


class AgentHistory(BaseModel):
    history: list[AgentPrediction] = Field(description="The last `limit` predictions, newest last.")
    total: int = Field(description="All predictions of the agent's model in the store.")
    limit: int


class AgentHealth(BaseModel):
    status: Literal["healthy"] = Field("healthy", description="The API answers; see GET /health for its parts.")
    agent_id: str
    mqtt_connected: bool = Field(description="Whether the MQTT broker answered the API's last probe.")


class OrchestratorStatus(BaseModel):
    state: Literal["nominal", "alerting"] = Field(description="alerting while a CRITICAL (or EMERGENCY) alert is open.")
    agent: Literal["Orchestrator"] = "Orchestrator"
    open_alerts: int
    open_critical_alerts: int
    timestamp: IsoDatetime


# ---- reading and judging ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    level: AlertLevel
    alert_type: str | None
    action: str


NORMAL_VERDICT = Verdict(AlertLevel.NORMAL, None, NO_ACTION)


def rule_book(request: Request, context: ServingContext) -> RuleBook:
    """The alert rules, loaded once per app (a bad file already stopped `factory serve` at start)."""
    book: RuleBook | None = getattr(request.app.state, _RULES_STATE_KEY, None)
    if book is None:
        book = load_rules(context.settings.alert_rules_file)
        setattr(request.app.state, _RULES_STATE_KEY, book)
    return book


def verdict_for(prediction: Prediction, rules: RuleBook) -> Verdict:
    """What the rules make of a prediction: the most severe alert they would raise, and its action."""
    candidates = rules.evaluate_predictions([prediction]).candidates
    if not candidates:
        return NORMAL_VERDICT
    worst = max(candidates, key=lambda c: SEVERITY_RANK[c.severity])
    return Verdict(LEVEL_OF_SEVERITY[worst.severity], worst.type, template_for(worst.type, worst.severity).action)


def agent_prediction(prediction: Prediction, rules: RuleBook) -> AgentPrediction:
    verdict = verdict_for(prediction, rules)
    return AgentPrediction.model_validate(
        {
            **prediction.model_dump(),
            "alert_level": verdict.level,
            "alert_type": verdict.alert_type,
            "action": verdict.action,
            "timestamp": prediction.produced_at,
        }
    )


def alert_level_of(alert: AlertRecord) -> AlertLevel:
    """The level an alert was sent with (external agents), else its severity's."""
    if alert.level and alert.level.upper() in AlertLevel.__members__:
        return AlertLevel(alert.level.upper())
    return LEVEL_OF_SEVERITY[alert.severity]


def status_of(agent: AgentName, levels: Iterable[AlertLevel], has_predictions: bool) -> AgentStatusName:
    if not has_predictions:
        return "initializing"
    worst = max(levels, key=LEVEL_RANK.__getitem__, default=AlertLevel.NORMAL)
    if worst == AlertLevel.EMERGENCY:
        return "emergency" if agent == AgentName.SAFETY else "critical"
    if worst == AlertLevel.CRITICAL:
        return "critical"
    if worst == AlertLevel.WARNING:
        return "warning"
    return "active"


def average_latency_ms(predictions: Sequence[Prediction]) -> float:
    gaps = [(p.produced_at - p.window_end).total_seconds() * 1000.0 for p in predictions if p.window_end is not None]
    return round(sum(gaps) / len(gaps), 3) if gaps else 0.0


def _extra(prediction: Prediction, name: str) -> Any:
    return (prediction.model_extra or {}).get(name)


def _assets_labelled(latest: Sequence[Prediction], label: str) -> list[str]:
    return sorted(p.asset_id for p in latest if p.label == label)


def _zone(prediction: Prediction) -> str:
    zone = _extra(prediction, "zone")
    return str(zone) if zone else prediction.asset_id


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def pm_state(latest: Sequence[Prediction], maintenance: Sequence[LatestReading] = ()) -> PmState:
    lowest = min(latest, key=lambda p: p.score, default=None)
    return PmState(
        robots_monitored=len(latest),
        robots_rul_low=_assets_labelled(latest, "rul_low"),
        lowest_rul=lowest.score if lowest else None,
        lowest_rul_asset=lowest.asset_id if lowest else None,
        maintenance=[
            MaintenanceReadingOut(
                asset_id=r.asset_id,
                vibration=getattr(r.model, "vibration", None),
                temperature=getattr(r.model, "temperature", None),
                ts=r.model.ts,
                received_at=r.received_at,
            )
            for r in maintenance
        ],
    )


def energy_state(latest: Sequence[Prediction]) -> EnergyState:
    anomalous = _assets_labelled(latest, "anomaly")
    return EnergyState(
        machines_monitored=len(latest),
        machines_anomalous=anomalous,
        anomaly_share=round(len(anomalous) / len(latest), 4) if latest else 0.0,
    )


def cyber_state(latest: Sequence[Prediction], recent: Sequence[Prediction]) -> CyberState:
    seen = {
        str(_extra(p, "attack_type")) for p in (*latest, *recent) if p.label == "attack" and _extra(p, "attack_type")
    }
    return CyberState(
        machines_monitored=len(latest),
        machines_under_attack=_assets_labelled(latest, "attack"),
        attack_types_seen=sorted(seen),
    )


def safety_state(latest: Sequence[Prediction]) -> SafetyState:
    zones: dict[str, set[str]] = {"low": set(), "medium": set(), "high": set()}
    for prediction in latest:
        zones.setdefault(prediction.label, set()).add(_zone(prediction))
    return SafetyState(zones_by_risk={risk: sorted(names) for risk, names in zones.items()})


def ppe_state(latest: Sequence[Prediction]) -> PpeState:
    frames: dict[str, float] = defaultdict(float)
    violating: dict[str, float] = defaultdict(float)
    for prediction in latest:
        zone = _zone(prediction)
        seen = _number(_extra(prediction, "frames"), 1.0)
        bad = _number(_extra(prediction, "frames_in_violation"), seen if prediction.label == "violation" else 0.0)
        frames[zone] += seen
        violating[zone] += bad
    return PpeState(
        cameras_monitored=len(latest),
        cameras_in_violation=_assets_labelled(latest, "violation"),
        compliance_by_zone={
            zone: round(1.0 - violating[zone] / frames[zone], 4) if frames[zone] else 1.0 for zone in sorted(frames)
        },
    )


def custom_state(
    agent: AgentName,
    latest: Sequence[Prediction],
    recent: Sequence[Prediction],
    maintenance: Sequence[LatestReading] = (),
) -> CustomState:
    if agent == AgentName.PM:
        return pm_state(latest, maintenance)
    if agent == AgentName.ENERGY:
        return energy_state(latest)
    if agent == AgentName.CYBER:
        return cyber_state(latest, recent)
    if agent == AgentName.SAFETY:
        return safety_state(latest)
    return ppe_state(latest)


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """What one status needs from the store, read in one go."""

    total: int
    recent: list[Prediction]  # newest first
    latest: list[Prediction]
    open_alerts: list[AlertRecord]


def open_alerts_of(book: AlertBook, spec: AgentSpec) -> list[AlertRecord]:
    """Alerts its model's rules raised and those sent in its name (the earlier agents' source), most recent first."""
    found: dict[str, AlertRecord] = {}
    for source in (spec.model_name, spec.agent_id):
        for alert in book.list_alerts(source=source, open_only=True, limit=MAX_PAGE_SIZE).items:
            found[alert.alert_id] = alert
    return sorted(found.values(), key=lambda a: (a.last_seen, a.alert_id), reverse=True)


def read_snapshot(store: ServingStore, spec: AgentSpec) -> AgentSnapshot:
    page = store.prediction_history(model_name=spec.model_name, limit=RECENT_PREDICTIONS)
    return AgentSnapshot(
        total=page.total,
        recent=page.items,
        latest=store.latest_predictions(model_name=spec.model_name),
        open_alerts=open_alerts_of(AlertBook(store.engine), spec),
    )


def maintenance_readings(context: ServingContext, agent: AgentName) -> list[LatestReading]:
    """The machines' latest maintenance readings from the API's live feed (pm only; others need none)."""
    if agent != AgentName.PM:
        return []
    context.live.start()
    return context.live.latest(kind=PayloadKind.MAINTENANCE)


def champion_version(context: ServingContext, model_name: str) -> str | None:
    """Only for models the API already tracks: their lookup is cached, so this stays cheap."""
    if model_name not in context.champions.model_names:
        return None
    champion = context.champions.get(model_name).champion
    return champion.version if champion else None


# ---- routes (the orchestrator's fixed path first, before the agents' parameterized ones) -----


@router.get(
    "/api/orchestrator/status",
    summary="The orchestrator's state: nominal, or alerting while a CRITICAL alert is open",
    response_model=OrchestratorStatus,
    responses=problem_responses(401, 503),
)
def orchestrator_status(context: Annotated[ServingContext, Depends(get_context)]) -> OrchestratorStatus:
    def count(store: ServingStore) -> tuple[int, int]:
        book = AlertBook(store.engine)
        return (
            book.list_alerts(open_only=True, limit=1).total,
            book.list_alerts(open_only=True, severity=Severity.CRITICAL, limit=1).total,
        )

    open_total, open_critical = context.store.use(count)
    return OrchestratorStatus(
        state="alerting" if open_critical else "nominal",
        open_alerts=open_total,
        open_critical_alerts=open_critical,
        timestamp=utc_now(),
    )


@router.get(
    f"{AGENT_PATH}/status",
    summary="An agent's status: latest prediction per asset, model version, open alerts",
    response_model=AgentStatus,
    responses=problem_responses(401, 404, 503),
)
def agent_status(
    agent: AgentName, request: Request, context: Annotated[ServingContext, Depends(get_context)]
) -> AgentStatus:
    """The earlier agents' status fields (SEED-CLIENTS.md) from the store, plus `latest`, the model
    version in use and the open alerts; `status` is explained in the module notes."""
    spec = AGENTS[agent]
    rules = rule_book(request, context)
    snapshot = context.store.use(lambda store: read_snapshot(store, spec))
    history = [agent_prediction(p, rules) for p in reversed(snapshot.recent)]
    levels = [verdict_for(p, rules).level for p in snapshot.latest] + [alert_level_of(a) for a in snapshot.open_alerts]
    newest = max(snapshot.latest, key=lambda p: (p.window_start or p.produced_at, p.produced_at), default=None)
    return AgentStatus(
        agent_id=spec.agent_id,
        agent=agent,
        model_name=spec.model_name,
        status=status_of(agent, levels, snapshot.total > 0),
        uptime=round(time.monotonic() - STARTED_AT, 3),
        predictions_made=snapshot.total,
        errors=0,
        last_prediction=history[-1] if history else None,
        prediction_history=history,
        metrics=AgentMetrics(
            total_predictions=snapshot.total,
            successful_predictions=snapshot.total,
            failed_predictions=0,
            average_latency_ms=average_latency_ms(snapshot.recent),
        ),
        custom_state=custom_state(agent, snapshot.latest, snapshot.recent, maintenance_readings(context, agent)),
        timestamp=utc_now(),
        latest=[PredictionOut.of(p) for p in snapshot.latest],
        model_version=newest.model_version if newest else None,
        model_versions=sorted({p.model_version for p in snapshot.latest}),
        champion_version=champion_version(context, spec.model_name),
        open_alerts=[AlertOut.model_validate(a.model_dump()) for a in snapshot.open_alerts],
    )


@router.get(
    f"{AGENT_PATH}/history",
    summary="An agent's last predictions, newest last, with alert level and action",
    response_model=AgentHistory,
    responses=problem_responses(401, 404, 422, 503),
)
def agent_history(
    agent: AgentName,
    request: Request,
    context: Annotated[ServingContext, Depends(get_context)],
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description="How many of the newest predictions (0 is refused).")
    ] = DEFAULT_HISTORY,
) -> AgentHistory:
    """The last `limit` predictions (the earlier `limit=0` meant "everything": a bug, now a 422)."""
    spec = AGENTS[agent]
    rules = rule_book(request, context)
    page = context.store.use(lambda store: store.prediction_history(model_name=spec.model_name, limit=limit))
    return AgentHistory(
        history=[agent_prediction(p, rules) for p in reversed(page.items)], total=page.total, limit=limit
    )


@router.get(
    f"{AGENT_PATH}/health",
    summary="An agent's liveness, as the earlier agents answered it",
    response_model=AgentHealth,
    responses=problem_responses(401, 404),
)
def agent_health(agent: AgentName, context: Annotated[ServingContext, Depends(get_context)]) -> AgentHealth:
    """Healthy while the API answers; `mqtt_connected` is the broker probe (cached a few seconds)."""
    return AgentHealth(agent_id=AGENTS[agent].agent_id, mqtt_connected=context.broker.get().reachable)


# ---- the earlier PPE agent's per-worker compliance ------------------------------------------------

PPE_MODEL = AGENTS[AgentName.PPE].model_name
WORKER_LOOKBACK_HOURS = 24  # default span of `GET /api/ppe/worker/{id}/compliance`
WORKER_PAGE = 5000  # predictions read per store query while tallying a worker


class WorkerCompliance(BaseModel):
    """The earlier PPE agent's per-worker answer (`violations`, `last_violation`, `compliance_rate`), plus its basis."""

    worker_id: str
    violations: int = Field(description="Frames showing the worker without hard hat or vest.")
    last_violation: IsoDatetime | None = Field(description="End of the newest window with such a frame; null if none.")
    compliance_rate: float = Field(
        description="1 - violations / frames (0 to 1); 1.0 when the worker was not seen (`frames` 0)."
    )
    frames: int = Field(description="Frames that named the worker in the span.")
    windows: int = Field(description="ppe_vision windows that saw the worker.")
    cameras: list[str] = Field(description="Cameras that saw the worker.")
    since: IsoDatetime = Field(description="Start of the span read.")
    last_seen: IsoDatetime | None = Field(description="End of the newest window that saw the worker.")


def worker_counts(prediction: Prediction, worker_id: str) -> tuple[int, int] | None:
    """(frames, frames in violation) of `worker_id` in one ppe_vision prediction; None when it names no such worker.

    The prediction's `workers` extra lists the workers its camera's frames named (a frame's
    `worker_id`) as `{"worker_id", "frames", "frames_in_violation"}` (`ppe_family.worker_tallies`).
    """
    workers = _extra(prediction, "workers")
    entries = workers if isinstance(workers, list) else []
    entry = next((e for e in entries if isinstance(e, dict) and e.get("worker_id") == worker_id), None)
    if entry is None:
        return None
    frames = int(_number(entry.get("frames"), 0.0))
    bad = int(_number(entry.get("frames_in_violation"), 0.0))
    return (frames, min(bad, frames)) if frames > 0 else None


def worker_compliance(predictions: Iterable[Prediction], worker_id: str, since: datetime) -> WorkerCompliance:
    frames = bad = windows = 0
    cameras: set[str] = set()
    last_seen: datetime | None = None
    last_violation: datetime | None = None
    for prediction in predictions:
        counts = worker_counts(prediction, worker_id)
        if counts is None:
            continue
        seen, violating = counts
        frames, bad, windows = frames + seen, bad + violating, windows + 1
        cameras.add(prediction.asset_id)
        at = prediction.window_end or prediction.produced_at
        last_seen = max(last_seen or at, at)
        if violating:
            last_violation = max(last_violation or at, at)
    return WorkerCompliance(
        worker_id=worker_id,
        violations=bad,
        last_violation=last_violation,
        compliance_rate=round(1.0 - bad / frames, 4) if frames else 1.0,
        frames=frames,
        windows=windows,
        cameras=sorted(cameras),
        since=since,
        last_seen=last_seen,
    )


def ppe_predictions_since(store: ServingStore, since: datetime) -> list[Prediction]:
    found: list[Prediction] = []
    while True:
        page = store.prediction_history(model_name=PPE_MODEL, start=since, limit=WORKER_PAGE, offset=len(found))
        found.extend(page.items)
        if len(found) >= page.total or not page.items:
            return found


@router.get(
    "/api/ppe/worker/{worker_id}/compliance",
    summary="One worker's PPE compliance, as the earlier PPE agent answered it",
    response_model=WorkerCompliance,
    responses=problem_responses(401, 422, 503),
)
def ppe_worker_compliance(
    worker_id: Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^/#+]+$", description="The worker.")],
    context: Annotated[ServingContext, Depends(get_context)],
    hours: Annotated[
        int, Query(ge=1, le=24 * 31, description="Span read, back from now (hours).")
    ] = WORKER_LOOKBACK_HOURS,
) -> WorkerCompliance:
    """Tallied from the ppe_vision predictions of the span whose cameras' frames named the worker
    (`worker_id` in a camera frame; the prediction's `workers` extra). A worker not seen in the span
    answers 0 violations and a rate of 1.0 with `frames` 0: the shape stays, `frames` tells."""
    since = utc_now() - timedelta(hours=hours)
    predictions = context.store.use(lambda store: ppe_predictions_since(store, since))
    return worker_compliance(predictions, worker_id, since)
