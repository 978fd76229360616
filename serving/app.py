"""The REST API (`factory serve`): a thin FastAPI layer over the serving store, the registry and the contract.

`create_app` builds an app from settings without touching the database, so the API starts even
when the store is down; `serve` runs it under uvicorn until SIGINT or SIGTERM.
"""

from __future__ import annotations

import copy
import gc
import logging
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from types import FrameType
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from uvicorn.config import LOGGING_CONFIG

from factory_pipelines import __version__
from factory_pipelines.settings import FactorySettings, load_settings
from serving import (
    agents,
    alerts,
    backlog,
    dashboard,
    events,
    fleet,
    health,
    keys,
    metrics,
    ml,
    predictions,
    schemas,
    websocket,
)
from serving.access import require_viewer
from serving.body_limit import BodySizeLimit
from serving.champions import DEFAULT_ANSWER_WITHIN_S, DEFAULT_CHAMPION_TTL_S, KNOWN_MODELS
from serving.context import DEFAULT_BROKER_TTL_S, ServingContext
from serving.metrics import ApiMetrics, RequestMetrics
from serving.problems import install_problem_handlers
from serving.ttl_cache import Clock

log = logging.getLogger(__name__)

API_TITLE = "Factory ML platform API"
API_DESCRIPTION = """\
Latest and historical model predictions for every plant asset, with lineage (model version,
MLflow run, Dagster run, data window); alerts with their action plans, texts and lineage, to raise
(`POST /alert`), acknowledge and clear; the JSON schema of every MQTT payload; and the health of
the broker, the serving store and the champion models. Each shift's backlog (prioritized tasks
with their evidence) is served as JSON or, with `Accept: text/markdown`, as Markdown.

Errors are RFC 9457 problem details (`application/problem+json`). A 503 means the serving store
is unreachable: the API keeps running and recovers by itself once the store is back.
"""


def create_app(
    settings: FactorySettings | None = None,
    *,
    model_names: Sequence[str] = KNOWN_MODELS,
    broker_ttl_s: float = DEFAULT_BROKER_TTL_S,
    champion_ttl_s: float = DEFAULT_CHAMPION_TTL_S,
    registry_answer_within_s: float = DEFAULT_ANSWER_WITHIN_S,
    clock: Clock = time.monotonic,
) -> FastAPI:
    """The API for `settings` (default: `load_settings()`); TTLs, waits and clock are injectable for tests.

    `registry_answer_within_s` bounds how long /health waits for a champion lookup; a slower
    registry shows the last known champion (or "unknown") until the lookup completes.
    The store is not opened here but on the first request that needs it (see StoreConnection).
    `app.state.serving` is the ServingContext; `app.state.serving.expire_caches()` forces fresh
    broker and champion answers.
    """
    settings = settings or load_settings()
    context = ServingContext.build(
        settings,
        model_names=model_names,
        broker_ttl_s=broker_ttl_s,
        champion_ttl_s=champion_ttl_s,
        registry_answer_within_s=registry_answer_within_s,
        clock=clock,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The live feed follows MQTT from the start, so a reading sent before anyone asked is served too.
        context.live.start()
        yield
        events.close_hub(_app)  # closes open WebSockets with 1001 and stops the hub's thread
        context.close()

    app = FastAPI(title=API_TITLE, description=API_DESCRIPTION, version=__version__, lifespan=lifespan)
    app.state.serving = context
    app.state.metrics = ApiMetrics(app)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimit, limits={ml.PPE_CHECK_PATH: ml.MAX_UPLOAD_BODY_BYTES})
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Accept"],
        )
    readers = [Depends(require_viewer)]  # every route reads at least; mutating ones ask for more themselves
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(predictions.router, dependencies=readers)
    app.include_router(schemas.router, dependencies=readers)
    # The orchestrator's fixed paths (alerts router) come before /api/{agent}/..., which would shadow them.
    app.include_router(alerts.router, dependencies=readers)
    app.include_router(agents.router, dependencies=readers)
    app.include_router(fleet.router, dependencies=readers)
    app.include_router(ml.router, dependencies=readers)  # inference reads: the viewer role is enough
    app.include_router(keys.router)
    app.include_router(websocket.router)  # authenticates its own connections (browsers cannot set headers)
    app.include_router(dashboard.router)  # static files; the data behind them needs a key like any client
    app.include_router(backlog.router, dependencies=readers)
    return app


class RedactApiKeys(logging.Filter):
    """Blank out `api_key=...` in log lines: a WebSocket client sends its key in the URL, which uvicorn logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "api_key=" in message:
            record.msg, record.args = API_KEY_IN_URL.sub(r"\1***", message), ()
        return True


API_KEY_IN_URL = re.compile(r"(api_key=)[^&\s\"']+")


def log_config() -> dict[str, Any]:
    """uvicorn's logging with timestamps, plus our own `serving` logger (store outages, recoveries);
    API keys in URLs are blanked in every line."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_api_keys"] = {"()": RedactApiKeys}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_api_keys")
    config["formatters"]["default"]["fmt"] = "%(asctime)s %(levelprefix)s %(name)s: %(message)s"
    config["formatters"]["access"]["fmt"] = (
        '%(asctime)s %(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'
    )
    config["loggers"]["serving"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _stop_signals_end(server: uvicorn.Server) -> Iterator[None]:
    """Make SIGINT/SIGTERM end `server` and let `serve` return normally.

    While running, uvicorn handles both itself (stop accepting, finish open requests, run the
    lifespan shutdown), then restores the previous handlers and raises the signal again: with
    Python's defaults that is a KeyboardInterrupt or death by SIGTERM. Our handlers, in place
    before and after uvicorn's, only ask the server to stop, so a signal that arrives during
    start-up is honoured too and the process exits with status 0.
    """
    if threading.current_thread() is not threading.main_thread():  # signals belong to the main thread
        yield
        return

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def freeze_startup_objects() -> None:
    """Keep what start-up made (modules, the app, its schemas) out of every later garbage collection.

    A full collection walks every tracked object: some 400,000 in a started API, 200-250 ms on the
    2-core machine, during which no request is answered. At 500 requests/s one such pause holds up
    more than 1 % of a 20-second run, so it alone sets the p99 (benchmarks/api_load.py). Frozen
    objects are skipped: a collection walks only what was made since.
    """
    gc.collect()
    gc.freeze()


def serve(settings: FactorySettings) -> None:
    """Run the API on settings.api_host:api_port; blocks until SIGINT/SIGTERM, then shuts down cleanly."""
    app = create_app(settings)
    freeze_startup_objects()
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=log_config(),
        access_log=True,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    with _stop_signals_end(server):
        server.run()
