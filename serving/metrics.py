"""`GET /metrics`: the API's own figures in Prometheus' text format.

Requests are counted and timed per route template (`/alerts/{alert_id}`, not each id), method and
status, so the label set stays small however many assets and alerts there are. Each app has its
own registry, so several apps in one process (tests) never mix their figures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from factory_pipelines import __version__
from serving.access import Viewer
from serving.events import running_hub

router = APIRouter(tags=["health"])

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ApiMetrics:
    def __init__(self, app: FastAPI) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(LiveHubCollector(app))
        self.requests = Counter(
            "factory_api_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "factory_api_request_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.in_flight = Gauge("factory_api_requests_in_flight", "Requests being answered", registry=self.registry)
        info = Gauge("factory_api_info", "Version of the platform serving the API", ["version"], registry=self.registry)
        info.labels(version=__version__).set(1)

    def record(self, method: str, route: object, status: int, seconds: float) -> None:
        template = getattr(route, "path", "unmatched")  # an unknown path is one label, not one per path
        self.requests.labels(method, template, str(status)).inc()
        self.latency.labels(method, template).observe(seconds)


class RequestMetrics:
    """ASGI middleware counting and timing every HTTP request into the app's `ApiMetrics`.

    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs each
    request in its own task group and streams the answer through memory channels, which under
    500 requests/s on two cores was about a sixth of the API's time (benchmarks/api_load.py).
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the app starts an answer: an exception that escapes it is a 500
        metrics = self.metrics
        metrics.in_flight.inc()

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            metrics.in_flight.dec()
            metrics.record(scope["method"], scope.get("route"), status, time.perf_counter() - started)


class LiveHubCollector(Collector):
    """The WebSocket hub's counts, read when scraped (the hub exists once a client has connected)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        hub = running_hub(self.app)
        stats = hub.stats() if hub is not None else None
        figures = {
            "factory_ws_connections": ("WebSocket clients connected", GaugeMetricFamily, "connections"),
            "factory_ws_connected": ("WebSocket clients ever connected", CounterMetricFamily, "connected_total"),
            "factory_ws_dropped_slow": (
                "WebSocket clients dropped for not reading",
                CounterMetricFamily,
                "dropped_slow",
            ),
            "factory_ws_events_dropped": ("Live events dropped before fan-out", CounterMetricFamily, "events_dropped"),
        }
        for name, (text, family, field) in figures.items():
            yield family(name, text, value=getattr(stats, field) if stats is not None else 0)


async def get_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics


@router.get(
    "/metrics",
    summary="Prometheus metrics of this API process",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}},
)
def metrics(metrics: Annotated[ApiMetrics, Depends(get_metrics)], _caller: Viewer) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
