"""Alerts over REST: raise one (`POST /alert`, the shape external agents already send), list, read
with plan, texts and lineage, acknowledge, clear, and the orchestrator's system state.

`POST /alert` goes through the same `AlertDesk` as the orchestrator job, at once (no Dagster run):
deduplicated, planned, recorded, texted when CRITICAL or EMERGENCY. When the store is down the
alert waits in the outbox (the timer job records and texts it once the store is back) and the
answer still says `handled`, with the deterministic plan's action.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.alert_model import (
    ActionPlan,
    AlertCandidate,
    AlertRecord,
    AlertState,
    NotificationRecord,
    severity_of_level,
)
from factory_pipelines.orchestrator import AlertOutbox, queue_for_store
from factory_pipelines.store import ServingStore, StoreUnavailableError
from factory_pipelines.telemetry import Severity, utc_now
from serving.access import Operator
from serving.context import ServingContext, get_context
from serving.datetimes import IsoDatetime
from serving.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Offset, next_offset
from serving.problems import NOT_FOUND, VALIDATION_ERROR, ProblemError, problem_responses

EXTERNAL_RULE = "external"
EXTERNAL_COOLDOWN_S = 600.0  # a repeat of the same source/type/asset this soon after clearing reopens it
EXTERNAL_AUTO_CLEAR_S = 3600.0  # an external alert not sent again for an hour clears itself

router = APIRouter(tags=["alerts"])
T = TypeVar("T")


class ExternalAlert(BaseModel):
    """What external agents send (SEED-CLIENTS.md): four strings; more fields are kept as evidence."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"level": "CRITICAL", "type": "RUL_LOW", "source": "pm_agent", "details": "R-07 RUL 40 h"}]
        },
    )

    level: str = Field(description="NORMAL, CAUTION, WARNING, CRITICAL or EMERGENCY (any case).")
    type: str = Field(min_length=1, max_length=64, description="Alert type, e.g. PPE_VIOLATION, RUL_LOW.")
    source: str = Field(min_length=1, max_length=128, description="The agent or system that raised it.")
    details: str = Field(description="One line for people: what happened.")
    asset_id: str | None = Field(None, max_length=128, description="The asset concerned, when known.")


class AlertHandled(BaseModel):
    status: str = Field("handled", description="Always 'handled' once the alert is recorded or queued.")
    action: str = Field(description="The plan's action code (the earlier planner's codes for its types).")
    alert_id: str | None = Field(None, description="Null while the alert waits for the store in the outbox.")
    created: bool | None = None
    count: int | None = None
    plan: ActionPlan
    notifications: list[NotificationRecord] = Field(default_factory=list)
    queued: bool = Field(False, description="True when the store was down and the alert waits in the outbox.")


class AlertOut(AlertRecord):
    first_seen: IsoDatetime
    last_seen: IsoDatetime


class AlertDetail(BaseModel):
    alert: AlertOut
    notifications: list[NotificationRecord]
    history: list[dict[str, Any]] = Field(description="Lifecycle events, oldest first.")


class AlertList(BaseModel):
    items: list[AlertOut] = Field(description="Newest first.")
    total: int
    limit: int
    offset: int
    next_offset: int | None


class Acknowledgement(BaseModel):
    by: str | None = Field(
        None, min_length=1, max_length=200, description="Who acknowledges or clears it; default: the API key's name."
    )
    comment: str | None = Field(None, max_length=2000)


class SystemState(BaseModel):
    """The earlier orchestrator's shape: alerts echo {level, type, source, details}; newest first."""

    alerts: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    last_update: str | None


def external_candidate(body: ExternalAlert, now: datetime) -> AlertCandidate:
    try:
        severity = severity_of_level(body.level)
    except ValueError as exc:
        raise ProblemError(422, str(exc), type_=VALIDATION_ERROR) from None
    extras = {k: v for k, v in (body.model_extra or {}).items()}
    return AlertCandidate(
        rule=EXTERNAL_RULE,
        type=body.type,
        severity=severity,
        level=body.level.strip().upper(),
        source=body.source,
        asset_id=body.asset_id,
        message=body.details,
        dedup_key=f"{body.source}:{body.type}:{body.asset_id or ''}",
        cooldown_s=EXTERNAL_COOLDOWN_S,
        auto_clear_s=EXTERNAL_AUTO_CLEAR_S,
        observed_at=now,
        evidence=extras,
    )


@router.post(
    "/alert",
    summary="Raise an alert (external agents)",
    response_model=AlertHandled,
    responses=problem_responses(401, 403, 422),
)
@router.post("/api/orchestrator/alert", include_in_schema=False, response_model=AlertHandled)
def post_alert(
    body: ExternalAlert, context: Annotated[ServingContext, Depends(get_context)], _caller: Operator
) -> AlertHandled:
    """Deduplicate, plan, record and (CRITICAL, EMERGENCY) text at once; answers `handled`.

    A body missing one of the four fields is a 422. When the store is down, the alert waits in the
    outbox and the answer carries the deterministic plan (`queued: true`).
    """
    now = utc_now()
    candidate = external_candidate(body, now)
    try:
        decision = context.store.use(lambda store: context.alert_desks.for_store(store).handle(candidate, now=now))
    except StoreUnavailableError as exc:
        outbox = AlertOutbox(context.settings.alert_outbox_dir)
        queued = queue_for_store(outbox, candidate, now=now, reason=str(exc))
        return AlertHandled(action=queued.plan.action, plan=queued.plan, queued=True)
    return AlertHandled(
        action=decision.plan.action,
        alert_id=decision.alert.alert_id,
        created=decision.created,
        count=decision.alert.count,
        plan=decision.plan,
        notifications=decision.notifications,
    )


def _book(store: ServingStore) -> AlertBook:
    return AlertBook(store.engine)


def _known(alert_id: str, action: Callable[[AlertBook], T], context: ServingContext) -> T:
    """Run `action` on the alert book; a 404 problem when the alert does not exist."""
    try:
        return context.store.use(lambda store: action(_book(store)))
    except KeyError:
        raise ProblemError(404, f"no alert {alert_id!r}", type_=NOT_FOUND) from None


@router.get(
    "/alerts",
    summary="Alerts, newest first, filtered and paged",
    response_model=AlertList,
    responses=problem_responses(422, 503),
)
def list_alerts(
    context: Annotated[ServingContext, Depends(get_context)],
    state: Annotated[AlertState | None, Query(description="Only alerts in this state.")] = None,
    severity: Annotated[Severity | None, Query(description="Only this severity.")] = None,
    source: Annotated[str | None, Query(max_length=128, description="Only this source (model or agent).")] = None,
    asset_id: Annotated[str | None, Query(max_length=128, description="Only this asset.")] = None,
    type: Annotated[str | None, Query(max_length=64, description="Only this alert type.")] = None,
    open_only: Annotated[bool, Query(description="Only alerts not cleared yet.")] = False,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    offset: Offset = 0,
) -> AlertList:
    page = context.store.use(
        lambda store: _book(store).list_alerts(
            state=state,
            severity=severity,
            source=source,
            asset_id=asset_id,
            type=type,
            open_only=open_only,
            limit=limit,
            offset=offset,
        )
    )
    return AlertList(
        items=[AlertOut.model_validate(a.model_dump()) for a in page.items],
        total=page.total,
        limit=limit,
        offset=offset,
        next_offset=next_offset(offset, len(page.items), page.total),
    )


@router.get(
    "/alerts/{alert_id}",
    summary="One alert with its plan, texts, history and lineage",
    response_model=AlertDetail,
    responses=problem_responses(404, 503),
)
def get_alert(alert_id: str, context: Annotated[ServingContext, Depends(get_context)]) -> AlertDetail:
    def read(book: AlertBook) -> AlertDetail:
        alert = book.get(alert_id)
        return AlertDetail(
            alert=AlertOut.model_validate(alert.model_dump()),
            notifications=book.notifications(alert_id),
            history=book.history(alert_id),
        )

    return _known(alert_id, read, context)


@router.post(
    "/alerts/{alert_id}/ack",
    summary="Acknowledge an alert",
    response_model=AlertOut,
    responses=problem_responses(401, 403, 404, 422, 503),
)
def acknowledge_alert(
    alert_id: str, body: Acknowledgement, context: Annotated[ServingContext, Depends(get_context)], caller: Operator
) -> AlertOut:
    """Records who and when (the first acknowledgement stands); stops its escalation."""
    now, by = utc_now(), body.by or caller.name
    alert = _known(alert_id, lambda book: book.acknowledge(alert_id, by=by, comment=body.comment, now=now), context)
    return AlertOut.model_validate(alert.model_dump())


@router.post(
    "/alerts/{alert_id}/clear",
    summary="Clear an alert",
    response_model=AlertOut,
    responses=problem_responses(401, 403, 404, 422, 503),
)
def clear_alert(
    alert_id: str, body: Acknowledgement, context: Annotated[ServingContext, Depends(get_context)], caller: Operator
) -> AlertOut:
    """Records who and when; a recurrence later raises a new alert (or reopens it inside its cooldown)."""
    now, by = utc_now(), body.by or caller.name
    alert = _known(alert_id, lambda book: book.clear(alert_id, by=by, comment=body.comment, now=now), context)
    return AlertOut.model_validate(alert.model_dump())


def _echo(alert: AlertRecord) -> dict[str, Any]:
    """An alert in the earlier orchestrator's shape, with our fields after it."""
    return {
        "level": alert.level or alert.severity.value,
        "type": alert.type,
        "source": alert.source,
        "details": alert.message,
        "alert_id": alert.alert_id,
        "asset_id": alert.asset_id,
        "state": alert.state.value,
        "count": alert.count,
        "timestamp": alert.last_seen.isoformat(),
    }


@router.get(
    "/system-state",
    summary="Recent alerts and decisions, newest first",
    response_model=SystemState,
    responses=problem_responses(503),
)
@router.get("/api/orchestrator/system-state", include_in_schema=False, response_model=SystemState)
def system_state(
    context: Annotated[ServingContext, Depends(get_context)],
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
) -> SystemState:
    alerts = context.store.use(lambda store: _book(store).list_alerts(limit=limit, offset=0)).items
    decisions = [
        {"timestamp": alert.last_seen.isoformat(), "alert": _echo(alert), "plan": alert.plan.model_dump(mode="json")}
        for alert in alerts
        if alert.plan is not None
    ]
    return SystemState(
        alerts=[_echo(alert) for alert in alerts],
        decisions=decisions,
        last_update=alerts[0].last_seen.isoformat() if alerts else None,
    )
