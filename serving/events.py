"""The live hub behind `/ws` and `/ws/{agent}`: one per app, fed by the API's MQTT feed, fanning out
to every connected client without letting any of them slow the feed or each other.

The path of an event:

1. `LiveTelemetry` (serving/live.py) calls the hub on its MQTT network thread with each accepted
   telemetry message and each prediction, alert and backlog. The hub only puts the event on a
   bounded queue (`put_nowait`; when `EVENT_BACKLOG` events already wait, the new one is dropped
   and counted): the network thread never waits for us.
2. One encoder thread turns each event into server messages, each serialised to JSON once, whatever
   the number of clients: `telemetry` (and `robot_update` or `cleanroom` for those kinds),
   `prediction` (and the earlier agent shape for `/ws/{agent}`), `alert`, `backlog`. Building a
   robot's item may read the store (its RUL, cached a few seconds), which is why this is neither
   the network thread nor the event loop.
3. `loop.call_soon_threadsafe` hands the encoded messages to the event loop, which offers each to
   every connection whose filter wants it: `put_nowait` on the connection's own bounded queue
   (`SEND_QUEUE_SIZE`). A connection's single sender task writes its queue to the socket.
4. A connection whose queue is full is dropped at once (removed from the fan-out, closed with 1013
   "try again later"); the others never wait for it.

Filters (`Subscription`): a set of channels and, optionally, a set of assets. An asset filter
applies to events that name an asset; events about none (a shift backlog, an alert raised without
an asset) pass it, since they concern every asset.

The hub lives on `app.state` (`hub_of`, created on the first connection, bound to the event loop
serving it); `close_hub(app)` stops it (lifespan shutdown): the encoder ends, the feed is
unfollowed and open connections are closed with 1001 "going away".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from fastapi import FastAPI, WebSocket
from pydantic import BaseModel, ConfigDict, Field
from starlette.websockets import WebSocketDisconnect, WebSocketState

from factory_pipelines.alert_rules import RuleBook, load_rules
from factory_pipelines.api_keys import Principal
from factory_pipelines.backlog_evidence import EvidenceLimits
from factory_pipelines.telemetry import (
    LEGACY_PARTICLE_SIZE_UM,
    Alert,
    PayloadKind,
    Prediction,
    RobotTelemetry,
    utc_now,
)
from serving.agents import AGENTS, agent_prediction
from serving.context import ServingContext
from serving.datetimes import IsoDatetime, iso_utc
from serving.fleet import CleanroomReading, TelemetryItem, cleanroom_reading, live_of, robot_detail, telemetry_item
from serving.live import LatestReading, LiveEvent, OutputChannel, PlatformOutput
from serving.predictions import PredictionOut
from serving.problems import ProblemError

log = logging.getLogger(__name__)

SEND_QUEUE_SIZE = 256  # messages waiting for one client before it counts as too slow and is dropped
EVENT_BACKLOG = 10_000  # events waiting for the encoder before new ones are dropped (the feed never waits)
CLOSE_TIMEOUT_S = 10.0  # how long closing a connection may wait for the client's socket to take the close frame
ENCODER_JOIN_S = 5.0

TRY_AGAIN_LATER = 1013
GOING_AWAY = 1001
LIVE_STREAM = "live"  # the stream of /ws; /ws/{agent} streams are named by their model


class Channel(StrEnum):
    """The event types a `/ws` client may subscribe to."""

    TELEMETRY = "telemetry"
    ROBOT_UPDATE = "robot_update"
    CLEANROOM = "cleanroom"
    PREDICTION = "prediction"
    ALERT = "alert"
    BACKLOG = "backlog"


ALL_CHANNELS: frozenset[Channel] = frozenset(Channel)
OUTPUT_CHANNELS: dict[OutputChannel, Channel] = {
    OutputChannel.PREDICTION: Channel.PREDICTION,
    OutputChannel.ALERT: Channel.ALERT,
    OutputChannel.BACKLOG: Channel.BACKLOG,
}


class AlertEvent(Alert):
    """An alert as published on `alerts/{severity}`, its time written with an explicit offset like the REST API's.

    It also echoes the earlier orchestrator's alert, `{level, type, source, details}` (as
    `GET /api/orchestrator/system-state` does): `level` as it was raised (its severity when a rule
    raised it), `details` the message.
    """

    ts: IsoDatetime
    level: str = Field(description="NORMAL .. EMERGENCY as raised; the severity for alerts of the platform's rules.")
    details: str = Field(description="The message (the earlier alerts' field).")

    @classmethod
    def of(cls, alert: Alert) -> AlertEvent:
        data = alert.model_dump()
        return cls.model_validate(
            {**data, "level": data.get("level") or alert.severity.value, "details": alert.message}
        )


# The robot contract's own fields (wire names), copied to the top of a robot's telemetry event; a
# device's extra fields stay under `reading` only, so a large extra is not sent twice.
ROBOT_FIELDS: tuple[str, ...] = tuple(
    field.alias or name for name, field in RobotTelemetry.model_fields.items() if name not in {"asset_id", "kind"}
)


class RobotTelemetryEvent(TelemetryItem):
    """A robot's `telemetry` event: the `GET /api/telemetry/latest` item, plus `robot_id` and the
    robot's measured fields at the top level too, as the earlier robot backend sent them
    (`payload.robot_id`, `payload.temperature`, `payload.vibration`, `payload.health_score`)."""

    model_config = ConfigDict(extra="allow")

    robot_id: str

    @classmethod
    def of(cls, item: TelemetryItem) -> RobotTelemetryEvent:
        measured = {name: item.reading[name] for name in ROBOT_FIELDS if name in item.reading}
        return cls.model_validate({**measured, **item.model_dump(), "robot_id": item.asset_id})


class LiveCleanroom(CleanroomReading):
    """A cleanroom as `GET /api/cleanroom/status` lists it, plus the earlier cleanroom's names:
    `particles` (count per m3 at >= 0.5 um) and `pressure` (differential, Pa)."""

    particles: float | None = Field(description="particles_per_m3 at 0.5 um (the earlier single count).")
    pressure: float | None = Field(description="differential_pressure_pa (the earlier name).")

    @classmethod
    def of(cls, room: CleanroomReading) -> LiveCleanroom:
        counts = room.particles_per_m3 or {}
        return cls.model_validate(
            {
                **room.model_dump(),
                "particles": counts.get(LEGACY_PARTICLE_SIZE_UM),
                "pressure": room.differential_pressure_pa,
            }
        )


def message_text(type_: str, payload_json: str) -> str:
    """A server message `{"type", "payload", "ts"}` around an already serialised payload (no re-encoding)."""
    return f'{{"type":"{type_}","payload":{payload_json},"ts":"{iso_utc(utc_now())}"}}'


def model_message(type_: str, payload: BaseModel) -> str:
    """A server message whose payload is a model, serialised as the REST API answers it (by alias)."""
    return message_text(type_, payload.model_dump_json(by_alias=True))


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One encoded server message and what filters look at: its stream, channel and asset."""

    stream: str
    channel: Channel | None
    asset_id: str | None
    text: str


@dataclass(frozen=True, slots=True)
class Subscription:
    """What a `/ws` client asked for: channels, and assets (None: every asset)."""

    channels: frozenset[Channel] = ALL_CHANNELS
    assets: frozenset[str] | None = None

    def wants(self, message: Outgoing) -> bool:
        if message.channel is None or message.channel not in self.channels:
            return False
        return self.assets is None or message.asset_id is None or message.asset_id in self.assets


ClientHandler = Callable[["Connection", str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class HubStats:
    connections: int
    connected_total: int
    dropped_slow: int
    events_dropped: int
    events_encoded: int
    messages_queued: int


@dataclass(eq=False)
class Connection:
    """One client: its socket, its principal, its filter and its bounded send queue.

    Everything here runs on the event loop. Only the sender task writes to the socket, so server
    replies (`pong`, `subscribed`, errors) go through the same queue as events, in order.
    """

    websocket: WebSocket
    principal: Principal
    stream: str = LIVE_STREAM
    queue_size: int = SEND_QUEUE_SIZE
    subscription: Subscription = field(default_factory=Subscription)
    end_code: int | None = None
    end_reason: str = ""
    _queue: asyncio.Queue[str] = field(init=False)
    _ended: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.queue_size)

    def wants(self, message: Outgoing) -> bool:
        if message.stream != self.stream:
            return False
        return self.stream != LIVE_STREAM or self.subscription.wants(message)

    def offer(self, text: str) -> bool:
        """Queue a message for the client; False (and the connection ends with 1013) when its queue is full."""
        if self.end_code is not None:
            return False
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            self.end(TRY_AGAIN_LATER, f"too slow: {self.queue_size} messages waiting")
            return False
        return True

    def reply(self, type_: str, payload: BaseModel | None = None) -> None:
        """A server reply to this client alone, queued behind the events it already has."""
        self.offer(message_text(type_, payload.model_dump_json(by_alias=True) if payload is not None else "{}"))

    def end(self, code: int, reason: str) -> None:
        """Ask the connection to close with `code` (the first reason stands)."""
        if self.end_code is None:
            self.end_code, self.end_reason = code, reason[:120]  # a close reason holds at most 123 bytes
        self._ended.set()

    def spawn(self, work: Awaitable[None]) -> None:
        """Run client-triggered work (a command) beside the receive loop; cancelled when the connection ends."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, first: str | None, handle: ClientHandler) -> None:
        """Send `first` (the init message), then the queue, while handing client messages to `handle`;
        returns once the client left or the connection was ended (then closed with its code)."""
        sender = asyncio.create_task(self._send_all(first))
        receiver = asyncio.create_task(self._receive_all(handle))
        ended = asyncio.create_task(self._ended.wait())
        try:
            await asyncio.wait({sender, receiver, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pending = [sender, receiver, ended, *self._tasks]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self.end_code is not None:
            await self.close(self.end_code, self.end_reason)

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame unless the socket is gone; a client that does not read is given CLOSE_TIMEOUT_S."""
        if self.websocket.application_state != WebSocketState.CONNECTED:
            return
        with contextlib.suppress(Exception):  # already closed by the client, or it never reads: nothing left to do
            await asyncio.wait_for(self.websocket.close(code, reason), CLOSE_TIMEOUT_S)

    async def _send_all(self, first: str | None) -> None:
        try:
            if first is not None:
                await self.websocket.send_text(first)
            while True:
                await self.websocket.send_text(await self._queue.get())
        except (WebSocketDisconnect, RuntimeError, OSError):
            return  # the client went away; the receiver sees it too

    async def _receive_all(self, handle: ClientHandler) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                raw = message.get("bytes") or b""
                text = raw.decode("utf-8", errors="replace")
            await handle(self, text)


class LiveHub:
    """Connections of one app and the fan-out to them (see the module docstring)."""

    def __init__(
        self,
        app: FastAPI,
        loop: asyncio.AbstractEventLoop,
        *,
        queue_size: int = SEND_QUEUE_SIZE,
        event_backlog: int = EVENT_BACKLOG,
    ) -> None:
        self.app = app
        self.loop = loop
        self.queue_size = queue_size
        self.context: ServingContext = app.state.serving
        self.live = live_of(app)  # started: the hub's events come from it
        self.closed = False
        self._connections: set[Connection] = set()  # touched on the loop only
        self._connected_total = 0
        self._dropped_slow = 0
        self._messages_queued = 0
        self._events: queue.Queue[LiveEvent | None] = queue.Queue(maxsize=event_backlog)
        self._events_dropped = 0  # written on the network thread only
        self._events_encoded = 0  # written on the encoder thread only
        self._rules: RuleBook | None = None
        self._rules_failed = False
        self._limits = EvidenceLimits()
        self._encoder = threading.Thread(target=self._encode_events, name="live-hub-encoder", daemon=True)
        self._encoder.start()
        self._unfollow = self.live.follow(self._on_live_event)

    # ---- connections (event loop) ----

    def connect(self, websocket: WebSocket, principal: Principal, *, stream: str = LIVE_STREAM) -> Connection:
        """Register a client: from now on its events queue up (its init is sent before them)."""
        connection = Connection(websocket, principal, stream=stream, queue_size=self.queue_size)
        if self.closed:
            connection.end(GOING_AWAY, "server shutting down")
            return connection
        self._connections.add(connection)
        self._connected_total += 1
        return connection

    def disconnect(self, connection: Connection) -> None:
        self._connections.discard(connection)

    def stats(self) -> HubStats:
        return HubStats(
            connections=len(self._connections),
            connected_total=self._connected_total,
            dropped_slow=self._dropped_slow,
            events_dropped=self._events_dropped,
            events_encoded=self._events_encoded,
            messages_queued=self._messages_queued,
        )

    def _deliver(self, messages: list[Outgoing]) -> None:
        """Offer freshly encoded messages to every connection that wants them; drop those that are full."""
        for connection in list(self._connections):
            for message in messages:
                if not connection.wants(message):
                    continue
                if connection.offer(message.text):
                    self._messages_queued += 1
                else:
                    self._connections.discard(connection)
                    if connection.end_code == TRY_AGAIN_LATER:
                        self._dropped_slow += 1
                        log.info("live hub: dropped a slow client (%s)", connection.principal.name)
                    break

    def _end_all(self, code: int, reason: str) -> None:
        for connection in list(self._connections):
            connection.end(code, reason)
        self._connections.clear()

    # ---- the feed (network thread) ----

    def _on_live_event(self, event: LiveEvent) -> None:
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self._events_dropped += 1
            if self._events_dropped % 1000 == 1:  # the first, then every thousandth: a sign the API is overloaded
                log.warning("live hub: encoder behind, %d event(s) dropped so far", self._events_dropped)

    # ---- encoding (encoder thread) ----

    def _encode_events(self) -> None:
        while True:
            event = self._events.get()
            if event is None or self.closed:
                return
            if not self._connections:  # len() of a set is safe to read here; nobody to encode for
                continue
            try:
                messages = self.encode(event)
            except Exception:  # one bad event must not end the stream
                log.exception("live hub: could not encode an event from %s", event.topic)
                continue
            self._events_encoded += 1
            if not messages:
                continue
            try:
                self.loop.call_soon_threadsafe(self._deliver, messages)
            except RuntimeError:  # the loop is closed: the app is gone
                return

    def encode(self, event: LiveEvent) -> list[Outgoing]:
        """The server messages one event makes, each serialised once."""
        if isinstance(event, LatestReading):
            return self._encode_reading(event)
        return self._encode_output(event)

    def _encode_reading(self, reading: LatestReading) -> list[Outgoing]:
        asset_id = reading.asset_id
        item = telemetry_item(reading)
        event = RobotTelemetryEvent.of(item) if reading.kind == PayloadKind.ROBOT else item
        messages = [Outgoing(LIVE_STREAM, Channel.TELEMETRY, asset_id, model_message("telemetry", event))]
        if reading.kind == PayloadKind.ROBOT:
            try:
                robot = robot_detail(self.app, self.live, asset_id)
            except ProblemError:  # forgotten already (evicted): nothing to update
                robot = None
            if robot is not None:
                messages.append(
                    Outgoing(LIVE_STREAM, Channel.ROBOT_UPDATE, asset_id, model_message("robot_update", robot))
                )
        elif reading.kind == PayloadKind.CLEANROOM:
            room = LiveCleanroom.of(cleanroom_reading(reading, self._limits))
            messages.append(Outgoing(LIVE_STREAM, Channel.CLEANROOM, asset_id, model_message("cleanroom", room)))
        return messages

    def _encode_output(self, output: PlatformOutput) -> list[Outgoing]:
        model = output.model
        channel = OUTPUT_CHANNELS[output.channel]
        if isinstance(model, Prediction):
            messages = [
                Outgoing(LIVE_STREAM, channel, model.asset_id, model_message("prediction", PredictionOut.of(model)))
            ]
            agent_message = self._agent_message(model)
            if agent_message is not None:
                messages.append(Outgoing(model.model_name, None, model.asset_id, agent_message))
            return messages
        if isinstance(model, Alert):
            event = AlertEvent.of(model)
            return [Outgoing(LIVE_STREAM, channel, model.asset_id, model_message("alert", event))]
        return [Outgoing(LIVE_STREAM, channel, None, model_message("backlog", model))]

    def _agent_message(self, prediction: Prediction) -> str | None:
        """The earlier agents' push, `{"agent_id", "timestamp", "prediction"}`, for the model's agent stream."""
        spec = next((s for s in AGENTS.values() if s.model_name == prediction.model_name), None)
        if spec is None:
            return None
        rules = self._rule_book()
        if rules is not None:
            body = agent_prediction(prediction, rules).model_dump_json(by_alias=True)
        else:  # without rules, the prediction as /predictions shows it
            body = PredictionOut.of(prediction).model_dump_json(by_alias=True)
        timestamp = iso_utc(prediction.produced_at)
        return f'{{"agent_id":"{spec.agent_id}","timestamp":"{timestamp}","prediction":{body}}}'

    def _rule_book(self) -> RuleBook | None:
        if self._rules is None and not self._rules_failed:
            try:
                self._rules = load_rules(self.context.settings.alert_rules_file)
            except Exception:  # `factory serve` already refuses a bad file at start; don't fail the stream
                log.exception("live hub: alert rules not loaded; agent streams carry plain predictions")
                self._rules_failed = True
        return self._rules

    # ---- life cycle ----

    def close(self) -> None:
        """Stop following the feed, end the encoder, close every connection with 1001 (thread-safe)."""
        if self.closed:
            return
        self.closed = True
        self._unfollow()
        with contextlib.suppress(queue.Full):  # when full, the encoder sees `closed` after its current event
            self._events.put_nowait(None)
        if threading.current_thread() is not self._encoder:
            self._encoder.join(ENCODER_JOIN_S)
        with contextlib.suppress(RuntimeError):  # the loop is closed already: so are its connections
            self.loop.call_soon_threadsafe(self._end_all, GOING_AWAY, "server shutting down")


_HUB_ATTR = "live_hub"
_HUB_LOCK = threading.Lock()


def hub_of(app: FastAPI) -> LiveHub:
    """The app's hub, created on first use; call it on the event loop that serves the app's sockets."""
    loop = asyncio.get_running_loop()
    with _HUB_LOCK:
        hub: LiveHub | None = getattr(app.state, _HUB_ATTR, None)
        if hub is not None and (hub.closed or hub.loop is not loop):  # a new server loop (tests): start over
            hub.close()
            hub = None
        if hub is None:
            hub = LiveHub(app, loop)
            setattr(app.state, _HUB_ATTR, hub)
        return hub


def running_hub(app: FastAPI) -> LiveHub | None:
    """The app's hub if one was started, without starting one (for stats and tests)."""
    return getattr(app.state, _HUB_ATTR, None)


def close_hub(app: FastAPI) -> None:
    """Stop the app's hub if it was started (lifespan shutdown; safe to call more than once)."""
    with _HUB_LOCK:
        hub: LiveHub | None = getattr(app.state, _HUB_ATTR, None)
        setattr(app.state, _HUB_ATTR, None)
    if hub is not None:
        hub.close()
