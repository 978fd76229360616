"""The live WebSocket endpoints: `/ws` (the plant, as events) and `/ws/{agent}` (the earlier agents' pushes).

Protocol (shared with the dashboard; see `serving.events` for the fan-out behind it):

- Connect to `ws://HOST/ws?api_key=KEY` (browsers cannot set headers on a WebSocket; `X-API-Key`
  and `Authorization: Bearer KEY` headers work too). Without a key only when settings allow
  anonymous reads. A wrong key, or none where one is needed, is accepted and at once closed with
  4401 and a reason; while the store cannot check a managed key, 1013 (try again later).
- Server -> client, always `{"type", "payload", "ts"}`. First `init` with the current state:
  robots (as `GET /api/robots` items), cleanroom (as `GET /api/cleanroom/status` items, plus the
  earlier names `particles` and `pressure`), open alerts (as `GET /alerts` items), the latest
  prediction per (model, asset) (as `GET /predictions/latest` items), the current shift's backlog
  (or null), plus the live feed's status and `warnings` naming what could not be read. Then
  `telemetry` (as `GET /api/telemetry/latest` items; a robot's also with `robot_id` and its
  measured fields at the top level, as the earlier robot backend sent them), `robot_update`,
  `cleanroom` (as in `init`), `prediction`, `alert` (also echoing the earlier `{level, type,
  source, details}`) and `backlog` events.
- Client -> server: `subscribe` (`"channel": "all"`, or `"channels": [...]` with optional
  `"assets": [...]`) -> `subscribed`; `ping` -> `pong`; `command` (operator role) ->
  `command_sent`, or `error` with the status the REST route would answer (401 without a key, 403
  for a viewer, 404 unknown asset, 503 broker or store unavailable). A malformed message is an
  `error` 422 and the connection stays open.
- `/ws/{agent}` (pm, energy, cyber, safety, ppe): each new prediction of the agent's model as
  `{"agent_id", "timestamp", "prediction"}`, the prediction with its alert level and action as
  `GET /api/{agent}/history` lists it. Clients may send `ping`; anything else is ignored.
- A client whose send queue (256 messages) is full is closed with 1013, never slowing the others.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, WebSocket
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.api_keys import Principal, Role
from factory_pipelines.backlog_book import BacklogBook
from factory_pipelines.backlog_evidence import EvidenceLimits
from factory_pipelines.backlog_model import Backlog
from factory_pipelines.store import ServingStore, StoreUnavailableError
from factory_pipelines.telemetry import PayloadKind, utc_now
from serving.access import ANONYMOUS, principal_for_key
from serving.agents import AGENTS, AgentName
from serving.alerts import AlertOut
from serving.backlog import current_shift
from serving.context import ServingContext
from serving.events import (
    LIVE_STREAM,
    TRY_AGAIN_LATER,
    Channel,
    Connection,
    LiveCleanroom,
    Subscription,
    hub_of,
    model_message,
)
from serving.fleet import (
    CommandNotDelivered,
    CommandRequest,
    LiveFeed,
    RobotOut,
    cleanroom_reading,
    fleet_robots,
    issue_command,
    live_of,
)
from serving.paging import MAX_PAGE_SIZE
from serving.predictions import PredictionOut
from serving.problems import ProblemError

router = APIRouter()

UNAUTHORIZED_CLOSE = 4401
MAX_ASSETS_IN_FILTER = 1000


# ---- messages ----


class InitPayload(BaseModel):
    """The current state, sent first on every `/ws` connection."""

    robots: list[RobotOut] = Field(description="As GET /api/robots lists them.")
    cleanroom: list[LiveCleanroom] = Field(
        description="As GET /api/cleanroom/status lists them, plus the earlier names `particles` and `pressure`."
    )
    alerts: list[AlertOut] = Field(description="Open alerts, newest first, as GET /alerts lists them.")
    predictions: list[PredictionOut] = Field(description="The newest prediction per (model, asset).")
    backlog: Backlog | None = Field(description="The current shift's backlog; null until it is written.")
    live: LiveFeed = Field(description="Whether the API's MQTT feed is up.")
    warnings: list[str] = Field(default_factory=list, description="What could not be read (e.g. the store).")


class SubscribeMessage(BaseModel):
    """`{"type": "subscribe", "channel": "all"}` or `{"type": "subscribe", "channels": [...], "assets": [...]}`."""

    type: Literal["subscribe"]
    channel: Literal["all"] | Channel | None = None
    channels: list[Literal["all"] | Channel] | None = None
    assets: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None, max_length=MAX_ASSETS_IN_FILTER, description="Only events about these assets; absent or null: all."
    )


class PingMessage(BaseModel):
    type: Literal["ping"]


class CommandMessage(BaseModel):
    type: Literal["command"]
    asset_id: str = Field(min_length=1, max_length=128, pattern=r"^[^/#+]+$")
    command: str = Field(min_length=1, max_length=64)
    parameters: dict[str, Any] = Field(default_factory=dict)


ClientMessage = Annotated[SubscribeMessage | PingMessage | CommandMessage, Field(discriminator="type")]
CLIENT_MESSAGE: TypeAdapter[SubscribeMessage | PingMessage | CommandMessage] = TypeAdapter(ClientMessage)


class Subscribed(BaseModel):
    channels: list[Channel]
    assets: list[str] | None


class ErrorPayload(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: int
    detail: str


class CommandSent(BaseModel):
    """The command as recorded and published (the REST route's answer), with the asset under `asset_id`."""

    model_config = ConfigDict(extra="allow")

    command_id: str
    asset_id: str
    command: str
    status: str


class Empty(BaseModel):
    pass


# ---- authentication ----


def presented_key(websocket: WebSocket) -> str | None:
    """`?api_key=`, else `X-API-Key`, else `Authorization: Bearer`."""
    key = websocket.query_params.get("api_key") or websocket.headers.get("x-api-key")
    if key:
        return key
    scheme, _, credentials = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


async def authenticate(websocket: WebSocket) -> Principal | None:
    """Accept the connection and return its principal; or close it (4401, or 1013 while keys cannot be checked)."""
    context: ServingContext = websocket.app.state.serving
    key = presented_key(websocket)
    principal: Principal | None = None
    refusal: tuple[int, str] | None = None
    if key is None:
        if context.settings.allow_anonymous_read:
            principal = ANONYMOUS
        else:
            refusal = (UNAUTHORIZED_CLOSE, "an API key is needed: ?api_key=KEY, X-API-Key or Authorization: Bearer")
    else:
        try:
            principal = await run_in_threadpool(principal_for_key, key, context)
        except StoreUnavailableError:
            refusal = (TRY_AGAIN_LATER, "the key cannot be checked now (serving store unavailable)")
        if principal is None and refusal is None:
            refusal = (UNAUTHORIZED_CLOSE, "unknown or revoked API key")
    await websocket.accept()  # accepted first, so the client sees the close code and reason
    if refusal is not None:
        await websocket.close(*refusal)
        return None
    return principal


# ---- the init message ----


def init_payload(app: FastAPI) -> InitPayload:
    """The current state from the live feed and the store; what the store cannot give is named in `warnings`."""
    context: ServingContext = app.state.serving
    live = live_of(app)
    robots, snapshot = fleet_robots(app, live)
    warnings = [snapshot.error] if snapshot.error else []
    limits = EvidenceLimits()
    rooms = [LiveCleanroom.of(cleanroom_reading(r, limits)) for r in live.latest(kind=PayloadKind.CLEANROOM)]
    shift_key = current_shift(context, utc_now()).key

    def read(store: ServingStore) -> tuple[list[AlertOut], list[PredictionOut], Backlog | None]:
        alerts = AlertBook(store.engine).list_alerts(open_only=True, limit=MAX_PAGE_SIZE).items
        predictions = store.latest_predictions()
        backlog = BacklogBook(store.engine).get(shift_key)
        return (
            [AlertOut.model_validate(a.model_dump()) for a in alerts],
            [PredictionOut.of(p) for p in predictions],
            backlog,
        )

    try:
        alerts, predictions, backlog = context.store.use(read)
    except StoreUnavailableError as exc:
        alerts, predictions, backlog = [], [], None
        warnings.append(f"alerts, predictions and backlog not read: {exc}"[:300])
    return InitPayload(
        robots=robots,
        cleanroom=rooms,
        alerts=alerts,
        predictions=predictions,
        backlog=backlog,
        live=LiveFeed.of(live.status()),
        warnings=warnings,
    )


# ---- client messages ----


def validation_detail(exc: ValidationError) -> str:
    parts = [
        f"{'.'.join(str(p) for p in error['loc']) or 'message'}: {error['msg']} (got {error.get('input')!r:.60})"
        for error in exc.errors()
    ]
    return "; ".join(parts)[:500]


def parse_client_message(text: str) -> SubscribeMessage | PingMessage | CommandMessage:
    """The client's message, or a ValueError saying what is wrong with it."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or "type" not in data:
        raise ValueError('a message is a JSON object with a "type": subscribe, ping or command')
    try:
        return CLIENT_MESSAGE.validate_python(data)
    except ValidationError as exc:
        raise ValueError(validation_detail(exc)) from None


def subscription_of(message: SubscribeMessage) -> Subscription:
    if message.channel is None and message.channels is None:
        raise ValueError('subscribe needs "channel": "all" (or one channel) or "channels": [...]')
    names = [message.channel] if message.channel is not None else list(message.channels or [])
    channels = frozenset(Channel) if "all" in names else frozenset(Channel(n) for n in names)
    assets = frozenset(message.assets) if message.assets is not None else None
    return Subscription(channels, assets)


def error(connection: Connection, status: int, detail: str, **extra: Any) -> None:
    connection.reply("error", ErrorPayload(status=status, detail=detail, **extra))


async def run_command(connection: Connection, message: CommandMessage) -> None:
    """Record and publish a command as the REST route does (in a worker thread), then answer the client."""
    principal = connection.principal
    if principal.via == ANONYMOUS.via:
        error(connection, 401, "a command needs the operator role: connect with an API key")
        return
    if not principal.role.allows(Role.OPERATOR):
        error(connection, 403, f"{principal.name} has the {principal.role} role; a command needs {Role.OPERATOR}")
        return
    app: FastAPI = connection.websocket.app
    body = CommandRequest(command=message.command, parameters=message.parameters)
    try:
        accepted = await run_in_threadpool(
            issue_command, app, app.state.serving, live_of(app), message.asset_id, body, principal
        )
    except ProblemError as exc:
        error(connection, exc.status, exc.detail)
    except StoreUnavailableError as exc:
        error(connection, 503, f"command not recorded, nothing sent: {exc}")
    except CommandNotDelivered as exc:
        error(connection, 503, str(exc), command_id=exc.command_id)
    else:
        connection.reply("command_sent", CommandSent(**accepted.model_dump(mode="json"), asset_id=message.asset_id))


async def handle_live_message(connection: Connection, text: str) -> None:
    """One message from a `/ws` client: answered in order through the connection's queue."""
    try:
        message = parse_client_message(text)
        if isinstance(message, SubscribeMessage):
            connection.subscription = subscription_of(message)
    except ValueError as exc:
        error(connection, 422, str(exc))
        return
    if isinstance(message, PingMessage):
        connection.reply("pong", Empty())
    elif isinstance(message, SubscribeMessage):
        subscription = connection.subscription
        assets = sorted(subscription.assets) if subscription.assets is not None else None
        channels = [c for c in Channel if c in subscription.channels]
        connection.reply("subscribed", Subscribed(channels=channels, assets=assets))
    else:
        connection.spawn(run_command(connection, message))


async def handle_agent_message(connection: Connection, text: str) -> None:
    """Agent streams only push; a `ping` is answered, anything else ignored (the earlier agents read nothing)."""
    try:
        message = parse_client_message(text)
    except ValueError:
        return
    if isinstance(message, PingMessage):
        connection.reply("pong", Empty())


# ---- routes ----


@router.websocket("/ws")
async def live_events(websocket: WebSocket) -> None:
    """The plant live: `init`, then events; see the module docstring for the protocol."""
    principal = await authenticate(websocket)
    if principal is None:
        return
    hub = hub_of(websocket.app)
    connection = hub.connect(websocket, principal, stream=LIVE_STREAM)  # events queue up from here, after init
    try:
        init = await run_in_threadpool(init_payload, websocket.app)
        await connection.run(model_message("init", init), handle_live_message)
    finally:
        hub.disconnect(connection)


@router.websocket("/ws/{agent}")
async def agent_events(websocket: WebSocket, agent: AgentName) -> None:
    """Each new prediction of one agent's model, in the earlier agents' shape."""
    principal = await authenticate(websocket)
    if principal is None:
        return
    hub = hub_of(websocket.app)
    connection = hub.connect(websocket, principal, stream=AGENTS[agent].model_name)
    try:
        await connection.run(None, handle_agent_message)
    finally:
        hub.disconnect(connection)
