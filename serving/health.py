"""`GET /health`: is the API alive, and which of the parts it depends on are down.

Always 200 while the process can answer (liveness); the body's `status` is `degraded` and the
failing component says `down` when the broker, the store or the model registry is unreachable.
Broker and champion answers are cached (see ServingContext) so probing /health stays cheap.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from factory_pipelines import __version__
from factory_pipelines.store import ServingStore, StoreUnavailableError
from factory_pipelines.telemetry import utc_now
from serving.champions import ChampionLookup
from serving.context import ServingContext, get_context
from serving.datetimes import IsoDatetime

ComponentStatus = Literal["up", "down"]

router = APIRouter(tags=["health"])


class BrokerHealth(BaseModel):
    status: ComponentStatus
    url: str = Field(description="The MQTT broker probed (credentials masked).")
    checked_at: IsoDatetime = Field(description="When the broker was last probed (cached a few seconds).")


class StoreHealth(BaseModel):
    status: ComponentStatus
    backend: str = Field(description="Database kind of the serving store, e.g. sqlite or postgresql.")
    predictions_stored: int | None = Field(description="Number of predictions in the store; null when it is down.")
    detail: str | None = None


class ModelHealth(BaseModel):
    status: Literal["champion", "no_champion", "unknown"] = Field(
        description="champion: a version holds the alias; no_champion: none yet; unknown: the registry didn't answer."
    )
    alias: str
    version: str | None = None
    run_id: str | None = Field(None, description="MLflow run that produced the champion version.")
    created_at: IsoDatetime | None = Field(None, description="When the champion version was registered.")
    resolved_at: IsoDatetime = Field(description="When the alias was last looked up (re-resolved periodically).")
    detail: str | None = None


class ModelsHealth(BaseModel):
    status: ComponentStatus = Field(description="down when the MLflow registry could not be asked.")
    models: dict[str, ModelHealth] = Field(description="Champion of every served model, by model name.")


class HealthComponents(BaseModel):
    broker: BrokerHealth
    store: StoreHealth
    models: ModelsHealth


class HealthReport(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="degraded when any component is down.")
    version: str = Field(description="Version of the platform serving this API.")
    checked_at: IsoDatetime
    components: HealthComponents


def mask_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _store_health(context: ServingContext) -> StoreHealth:
    def ping_and_count(store: ServingStore) -> int:
        store.ping()
        return store.count_predictions()

    try:
        count = context.store.use(ping_and_count)
    except StoreUnavailableError as exc:
        return StoreHealth(status="down", backend=context.store.backend, predictions_stored=None, detail=str(exc))
    return StoreHealth(status="up", backend=context.store.backend, predictions_stored=count)


def _model_health(lookup: ChampionLookup, alias: str) -> ModelHealth:
    if lookup.error is not None:
        return ModelHealth(status="unknown", alias=alias, resolved_at=lookup.resolved_at, detail=lookup.error)
    champion = lookup.champion
    if champion is None:
        return ModelHealth(status="no_champion", alias=alias, resolved_at=lookup.resolved_at)
    return ModelHealth(
        status="champion",
        alias=alias,
        version=champion.version,
        run_id=champion.run_id,
        created_at=champion.created_at,
        resolved_at=lookup.resolved_at,
    )


def check_health(context: ServingContext) -> HealthReport:
    probe = context.broker.get()
    broker = BrokerHealth(
        status="up" if probe.reachable else "down",
        url=mask_credentials(context.broker.url),
        checked_at=probe.checked_at,
    )
    store = _store_health(context)
    lookups = context.champions.all()
    models = ModelsHealth(
        status="up" if all(lookup.registry_reachable for lookup in lookups) else "down",
        models={lookup.name: _model_health(lookup, context.champions.alias) for lookup in lookups},
    )
    components = HealthComponents(broker=broker, store=store, models=models)
    degraded = any(c.status == "down" for c in (broker, store, models))
    return HealthReport(
        status="degraded" if degraded else "ok",
        version=__version__,
        checked_at=utc_now(),
        components=components,
    )


class NotReady(HealthReport):
    """The health report, answered with 503 by /ready while a part the API needs is down."""


@router.get(
    "/ready",
    summary="Readiness: 200 when the broker, the store and the model registry answer; 503 otherwise",
    response_model=HealthReport,
    responses={503: {"model": NotReady, "description": "Some component is down; `components` says which."}},
)
def ready(context: Annotated[ServingContext, Depends(get_context)]) -> HealthReport | JSONResponse:
    """For load balancers and Kubernetes: take this instance out of rotation while a dependency is down.

    A model that has no champion yet does not make the API unready (it serves the others); a registry
    that does not answer does.
    """
    report = check_health(context)
    if report.status == "ok":
        return report
    return JSONResponse(report.model_dump(mode="json"), status_code=503)


@router.get(
    "/health",
    summary="Liveness and the state of the broker, the store and the champion models",
    response_model=HealthReport,
)
def health(context: Annotated[ServingContext, Depends(get_context)]) -> HealthReport:
    """Answers 200 whenever the API runs; read `status` and `components` to see what is down."""
    return check_health(context)
