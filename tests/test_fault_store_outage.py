"""The serving store's PostgreSQL goes down under a running API and comes back: 503s, then recovery.

The test starts a PostgreSQL cluster of its own (`initdb`, `pg_ctl`, trust auth, a free port), seeds
the store through the platform's own writers (predictions, a command, a shift backlog; an alert
through `POST /alert`), and runs the API as `factory serve` on it, beside a collector (`factory
collect`) fed by a numbered QoS 1 stream on the session's broker.

Which routes read the store comes from the API's own OpenAPI document: every GET operation that
documents a 503 answer (`/ready` aside, whose 503 is about readiness). While PostgreSQL is stopped
(`pg_ctl stop -m immediate`, a crash as far as clients can tell), each answers 503 with an
`application/problem+json` body of the store-unavailable type that never shows the database URL's
password; every other GET route still answers below 500, `/health` says the store is down, and the
collector goes on sealing windows. Once PostgreSQL is started again, the same routes answer 200 with
the seeded data, without restarting the API.
"""

from __future__ import annotations

import logging
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from factory_pipelines.backlog_book import BacklogBook
from factory_pipelines.backlog_model import Backlog, BacklogTask, EvidenceItem, EvidenceKind, WriterInfo, task_id
from factory_pipelines.command_book import CommandBook
from factory_pipelines.settings import load_settings
from factory_pipelines.shifts import Shift
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import Command
from serving.problems import PROBLEM_MEDIA_TYPE, STORE_UNAVAILABLE
from tests.conftest import TEST_API_KEYS, find_free_port
from tests.factory_processes import (  # noqa: F401 - factory_processes is a fixture
    FactoryProcesses,
    factory_env,
    factory_processes,
    wait_for_part,
)
from tests.numbered_stream import NumberedStream, durable_keys, sealed_rows_received_since
from tests.postgres_server import PG_PASSWORD, NoPostgresServer, PostgresServer, own_postgres_cluster
from tests.predictions import recent_prediction

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
OUTAGE_TIMEOUT_S = 20.0
RECOVER_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 15.0  # a route that hangs on a dead database fails here
ANSWER_CACHE_S = 10.0  # hot routes may answer from memory for a second (serving.context.ANSWER_TTL_S)
WINDOWS_DURING_OUTAGE = 2

ADMIN = {"X-API-Key": TEST_API_KEYS["admin"]}  # admin reads everything, /api/keys included
OPERATOR = {"X-API-Key": TEST_API_KEYS["operator"]}
READINESS_ROUTE = "/ready"  # its 503 means "not ready", for any part; checked elsewhere

STREAM_SITE = f"outage{uuid.uuid4().hex[:6]}"
STREAM_ASSETS = ("line-a", "line-b")
STREAM_RATE_PER_S = 100.0
SEEDED_MACHINE, SEEDED_ROBOT = "machine-77", "robot-77"
SEEDED_COMMAND = f"cmd-outage-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """A started PostgreSQL cluster on a free port, trust auth; crashed and removed after the test."""
    try:
        with own_postgres_cluster(find_free_port()) as server:
            yield server
    except NoPostgresServer as exc:
        pytest.skip(str(exc))


# ---- what the store holds before the outage ----


@dataclass(frozen=True)
class Seeded:
    """What the test wrote, and the strings by which an answer shows it."""

    path_values: dict[str, str]
    markers: frozenset[str]


def seed_store(db_url: str, *, shift_at: Callable[[datetime], Shift]) -> Seeded:
    """Predictions, a command and this shift's backlog, through the writers the platform uses."""
    store = ServingStore(db_url)  # applies the migrations, as the API would on first use
    try:
        predictions = [
            recent_prediction("energy_iforest", SEEDED_MACHINE, 0.81, "anomaly"),
            recent_prediction("cyber_detector", SEEDED_MACHINE, 0.12, "normal"),
            recent_prediction("rul_lstm", SEEDED_ROBOT, 950.0, "normal", rul_lower=900.0, rul_upper=1000.0),
        ]
        store.upsert_predictions(predictions)
        CommandBook(store.engine).record_issued(SEEDED_ROBOT, Command(command_id=SEEDED_COMMAND, command="stop"))
        shift = shift_at(datetime.now(UTC))
        evidence = EvidenceItem(
            evidence_id=f"pred-rul-{SEEDED_ROBOT}-{shift.key}",
            kind=EvidenceKind.RUL,
            asset_id=SEEDED_ROBOT,
            observed_at=datetime.now(UTC) - timedelta(minutes=1),
            summary=f"{SEEDED_ROBOT} RUL 950 cycles",
        )
        task = BacklogTask(
            task_id=task_id(shift, 0),
            asset_id=SEEDED_ROBOT,
            action="SCHEDULE_MAINTENANCE_NEXT_SHIFT",
            title=f"Inspect the bearing of {SEEDED_ROBOT}",
            priority_score=60,
            priority_reasons=["RUL below 1000 cycles"],
            due_at=shift.end,
            estimated_minutes=30,
            required_skill="mechanic",
            evidence_ids=[evidence.evidence_id],
        )
        BacklogBook(store.engine).save(
            Backlog(
                shift=shift,
                summary="One bearing to inspect.",
                tasks=[task],
                generated_at=datetime.now(UTC),
                writer=WriterInfo(name="deterministic"),
                evidence=[evidence],
            )
        )
    finally:
        store.dispose()
    return Seeded(
        path_values={
            "command_id": SEEDED_COMMAND,
            "shift_key": shift.key,
            "robot_id": SEEDED_ROBOT,
            "worker_id": "W-1",  # any worker: the route answers for workers it never saw
        },
        markers=frozenset({SEEDED_MACHINE, SEEDED_ROBOT, SEEDED_COMMAND, shift.key}),
    )


# ---- the API's GET routes, from its OpenAPI document ----


@dataclass(frozen=True)
class Route:
    template: str
    path: str
    reads_store: bool  # documents a 503: the store is what it needs


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def get_routes(doc: dict[str, Any], path_values: dict[str, str]) -> list[Route]:
    """Every GET operation with its path filled in: an enum's first value, else the seeded value."""
    routes: list[Route] = []
    for template, operations in doc["paths"].items():
        operation = operations.get("get")
        if operation is None or template == READINESS_ROUTE:
            continue
        reads_store = "503" in operation.get("responses", {})
        path = template
        for parameter in operation.get("parameters", []):
            if parameter["in"] != "path":
                continue
            name = parameter["name"]
            schema = _resolve(doc, parameter.get("schema", {}))
            if "enum" in schema:
                value = str(schema["enum"][0])
            elif name in path_values:
                value = path_values[name]
            elif not reads_store:
                value = "no-such-thing"  # only has to be answered below 500
            else:
                raise AssertionError(
                    f"{template} reads the store and takes {{{name}}}: seed something for it and add it to "
                    "the path values, so the test can ask for a thing that exists"
                )
            path = path.replace(f"{{{name}}}", value)
        routes.append(Route(template, path, reads_store))
    return routes


def markers_in(text: str, markers: frozenset[str]) -> frozenset[str]:
    return frozenset(marker for marker in markers if marker in text)


def windows_sealed_since(windows_dir: Path, moment: datetime) -> set[str]:
    """Keys of sealed windows holding stream rows the collector received after `moment`."""
    return set(sealed_rows_received_since(windows_dir, moment, STREAM_ASSETS)["window_key"])


@pytest.mark.timeout(180)
def test_store_routes_answer_503_problems_while_postgres_is_down_and_recover_without_a_restart(
    tmp_path: Path,
    mqtt_url: str,
    free_port: Callable[[], int],
    postgres: PostgresServer,
    factory_processes: FactoryProcesses,  # noqa: F811
) -> None:
    data_dir = tmp_path / "data"
    windows_dir = data_dir / "windows"
    api_port = free_port()
    env = factory_env(
        FACTORY_DATA_DIR=str(data_dir),
        FACTORY_MQTT_URL=mqtt_url,
        FACTORY_DB_URL=postgres.url,
        FACTORY_SITE=STREAM_SITE,
        FACTORY_WINDOW_SECONDS="1",
        FACTORY_COLLECTOR_ID=f"outage-{uuid.uuid4().hex[:6]}",
        FACTORY_API_HOST="127.0.0.1",
        FACTORY_API_PORT=str(api_port),
        FACTORY_MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'no-registry.db'}",  # the registry is not the point
    )
    collector = factory_processes.start("collector", ["collect"], env)
    api_process = factory_processes.start("api", ["serve"], env)
    seeded = seed_store(postgres.url, shift_at=load_settings(data_dir=data_dir).shift_calendar.shift_at)
    collector.wait_for_log("subscribed to", timeout=START_TIMEOUT_S)
    stream = NumberedStream(
        mqtt_url,
        site=STREAM_SITE,
        assets=STREAM_ASSETS,
        rate_per_s=STREAM_RATE_PER_S,
        client_id=f"outage-{uuid.uuid4().hex[:6]}",
    )
    stream.start()
    api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=REQUEST_TIMEOUT_S, headers=ADMIN)

    def answer(path: str) -> httpx.Response:
        try:
            return api.get(path)
        except httpx.TimeoutException as exc:
            raise AssertionError(f"GET {path} did not answer within {REQUEST_TIMEOUT_S:.0f} s: {exc!r}") from exc

    try:
        wait_for_part("api", lambda: _answers(api, "/health"), START_TIMEOUT_S, "GET /health answers", api_process)
        raised = api.post(
            "/alert",
            json={
                "level": "WARNING",
                "type": "OUTAGE_SEED",
                "source": "fault-test",
                "details": "seeded",
                "asset_id": SEEDED_MACHINE,
            },
            headers=OPERATOR,
        )
        assert raised.status_code == 200 and raised.json()["alert_id"], raised.text
        path_values = seeded.path_values | {"alert_id": raised.json()["alert_id"]}
        markers = seeded.markers | {raised.json()["alert_id"]}
        routes = get_routes(answer("/openapi.json").json(), path_values)
        store_routes = [route for route in routes if route.reads_store]
        assert {"/predictions/latest", "/alerts", "/backlogs"} <= {route.template for route in store_routes}
        log.info("store routes: %s", ", ".join(route.path for route in store_routes))

        before: dict[str, frozenset[str]] = {}
        for route in store_routes:
            response = answer(route.path)
            assert response.status_code == 200, f"before the outage, GET {route.path}: {response.text[:300]}"
            before[route.path] = markers_in(response.text, markers)
        shown = frozenset().union(*before.values())
        assert shown == markers, f"seeded but shown by no store route: {sorted(markers - shown)}"

        # ---- PostgreSQL vanishes ----
        postgres.crash()
        crashed_at = datetime.now(UTC)
        for route in store_routes:
            # A hot route may answer from its one-second memory first; the first other answer must be the 503.
            response = wait_for_part(
                "api",
                lambda r=route: (a := answer(r.path)).status_code != 200 and a,
                ANSWER_CACHE_S,
                f"GET {route.path} stops answering 200 from the store",
                api_process,
            )
            assert_store_problem(route.path, response, postgres)
            log.info("GET %s during the outage: %s %s", route.path, response.status_code, response.json()["detail"])
        for route in routes:
            if not route.reads_store:
                response = answer(route.path)
                assert response.status_code < 500, f"GET {route.path} during the outage: {response.status_code}"
        health = answer("/health")
        assert health.status_code == 200
        store_health = health.json()["components"]["store"]
        assert store_health["status"] == "down" and store_health["backend"] == "postgresql", store_health
        assert PG_PASSWORD not in health.text
        wait_for_part(
            "collector",
            lambda: len(windows_sealed_since(windows_dir, crashed_at)) >= WINDOWS_DURING_OUTAGE,
            OUTAGE_TIMEOUT_S,
            f"{WINDOWS_DURING_OUTAGE} windows sealed while the store is down",
            collector,
        )
        for route in store_routes:  # still down: nothing came back by accident
            assert answer(route.path).status_code == 503, route.path

        # ---- PostgreSQL is back; the API was never restarted ----
        postgres.start()
        for route in store_routes:
            response = wait_for_part(
                "api",
                lambda r=route: (a := answer(r.path)).status_code == 200 and a,
                RECOVER_TIMEOUT_S,
                f"GET {route.path} answers 200 again",
                api_process,
            )
            assert markers_in(response.text, markers) == before[route.path], f"GET {route.path} after recovery"
        assert answer("/health").json()["components"]["store"]["status"] == "up"
        assert api_process.alive() and api_process.count("Application startup complete") == 1
    finally:
        api.close()
        never_acknowledged = stream.stop_and_settle()

    assert not never_acknowledged and not stream.refused and not stream.unrouted
    wait_for_part(
        "collector",
        lambda: durable_keys(windows_dir) >= stream.acknowledged,
        OUTAGE_TIMEOUT_S,
        "every acknowledged message on disk",
        collector,
    )
    assert collector.stop(signal.SIGTERM) == 0, collector.log_tail()
    assert api_process.stop(signal.SIGTERM) == 0, api_process.log_tail()
    assert PG_PASSWORD not in api_process.log(), "the API logged the database password"


def _answers(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.TransportError:
        return False


def assert_store_problem(path: str, response: httpx.Response, postgres: PostgresServer) -> None:
    """A 503 problem+json that names the store as the cause and shows no credentials, host, port or path."""
    context = f"GET {path} during the outage: {response.status_code} {response.text[:400]}"
    assert response.status_code == 503, context
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE), context
    body = response.json()
    assert body["type"] == STORE_UNAVAILABLE and body["status"] == 503, context
    assert "store" in body["title"].lower() and "store" in body.get("detail", "").lower(), context
    assert body["instance"] == path, context
    assert response.headers.get("retry-after"), context
    assert PG_PASSWORD not in response.text and postgres.url not in response.text, context
    assert f"port {postgres.port}" not in response.text and str(postgres.root) not in response.text, context
