"""`GET /metrics`: the API's own figures in Prometheus' text format.

Requests are counted and timed per route template (`/alerts/{alert_id}`, not each id), method and
status, so the label set stays small however many assets and alerts there are. Each app has its
own registry, so several apps in one process (tests) never mix their figures.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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

    async def middleware(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        self.in_flight.inc()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            self.in_flight.dec()
            route = request.scope.get("route")
            template = getattr(route, "path", "unmatched")  # an unknown path is one label, not one per path
            self.requests.labels(request.method, template, str(status)).inc()
            self.latency.labels(request.method, template).observe(time.perf_counter() - started)


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


def get_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics


@router.get(
    "/metrics",
    summary="Prometheus metrics of this API process",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}},
)
def metrics(metrics: Annotated[ApiMetrics, Depends(get_metrics)], _caller: Viewer) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
