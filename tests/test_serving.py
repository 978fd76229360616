"""The REST API over a real SQLite serving store, a real MLflow registry and a real MQTT broker."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import mlflow.sklearn
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LinearRegression

from factory_pipelines.model_registry import CHAMPION_ALIAS
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import PUBLISHED_MODELS, Prediction, json_schemas
from serving import create_app
from serving.health import mask_credentials

MODELS = ("energy_iforest", "cyber_detector")
ASSETS = ("M001", "M002", "M003")
WINDOWS = 4
BASE = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
PROBLEM_JSON = "application/problem+json"
# Upper bound for /health to wait on a real registry lookup (returns as soon as the lookup ends).
WAIT_FOR_REGISTRY_S = 60.0


def window_start(index: int) -> datetime:
    return BASE + timedelta(minutes=index)


def window_key(index: int) -> str:
    return f"collector-1-{window_start(index):%Y%m%dT%H%M%S}"


def seed_predictions() -> list[Prediction]:
    rows = [
        Prediction(
            model_name=model,
            model_version="3" if model == "energy_iforest" else "1",
            asset_id=asset,
            window_key=window_key(index),
            score=round(0.1 * index + 0.01 * a, 3),
            label="anomaly" if index == WINDOWS - 1 and asset == "M002" else "normal",
            produced_at=window_start(index) + timedelta(seconds=75),
            window_start=window_start(index),
            window_end=window_start(index + 1),
            mlflow_run_id=f"run-{model}",
            dagster_run_id=f"dagster-{index}",
            threshold=0.5,  # a model-specific extra: kept and served
        )
        for model in MODELS
        for a, asset in enumerate(ASSETS)
        for index in range(WINDOWS)
    ]
    random.Random(7).shuffle(rows)  # "latest" must come from window times, not insertion order
    return rows


class ManualClock:
    """Monotonic clock the test advances by hand, so cache expiry needs no sleep."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def unreachable_mqtt_url(free_port: Callable[[], int]) -> str:
    return f"mqtt://127.0.0.1:{free_port()}"


@pytest.fixture
def seeded_db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'serving.db'}"
    store = ServingStore(url)
    store.upsert_predictions(seed_predictions())
    store.dispose()
    return url


def make_settings(tmp_path: Path, db_url: str, mqtt_url: str, mlflow_uri: str | None = None) -> FactorySettings:
    return load_settings(
        data_dir=tmp_path / "data",
        db_url=db_url,
        mqtt_url=mqtt_url,
        mlflow_tracking_uri=mlflow_uri or f"sqlite:///{tmp_path / 'mlflow.db'}",
    )


@pytest.fixture
def client(tmp_path: Path, seeded_db_url: str, unreachable_mqtt_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path, seeded_db_url, unreachable_mqtt_url))) as test_client:
        yield test_client


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "status"} <= body.keys()
    return body


# ---- predictions ----


def test_latest_gives_the_newest_window_per_model_and_asset(client: TestClient) -> None:
    response = client.get("/predictions/latest")
    assert response.status_code == 200
    items = response.json()["items"]

    assert [(i["model_name"], i["asset_id"]) for i in items] == sorted((m, a) for m in MODELS for a in ASSETS)
    newest = WINDOWS - 1
    for item in items:
        assert item["window_key"] == window_key(newest)
        assert datetime.fromisoformat(item["window_start"]) == window_start(newest)
        assert datetime.fromisoformat(item["window_end"]) == window_start(newest + 1)
        assert item["produced_at"].endswith("+00:00")
        assert item["mlflow_run_id"] == f"run-{item['model_name']}"
        assert item["dagster_run_id"] == f"dagster-{newest}"
        assert item["threshold"] == 0.5
    energy_m002 = next(i for i in items if i["model_name"] == "energy_iforest" and i["asset_id"] == "M002")
    assert energy_m002["label"] == "anomaly"
    assert energy_m002["model_version"] == "3"
    assert energy_m002["score"] == pytest.approx(0.31)


def test_latest_filters_by_model_and_asset(client: TestClient) -> None:
    by_model = client.get("/predictions/latest", params={"model": "cyber_detector"}).json()["items"]
    assert {(i["model_name"], i["asset_id"]) for i in by_model} == {("cyber_detector", a) for a in ASSETS}

    by_asset = client.get("/predictions/latest", params={"asset_id": "M003"}).json()["items"]
    assert {(i["model_name"], i["asset_id"]) for i in by_asset} == {(m, "M003") for m in MODELS}

    both = client.get("/predictions/latest", params={"model": "energy_iforest", "asset_id": "M001"}).json()["items"]
    assert [(i["model_name"], i["asset_id"], i["window_key"]) for i in both] == [
        ("energy_iforest", "M001", window_key(WINDOWS - 1))
    ]

    assert client.get("/predictions/latest", params={"model": "no_such_model"}).json() == {"items": []}


def test_history_pages_through_everything_with_right_totals(client: TestClient) -> None:
    seen: list[tuple[str, str]] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        response = client.get("/predictions/history", params={"model": "energy_iforest", "limit": 5, "offset": offset})
        assert response.status_code == 200
        page = response.json()
        assert page["total"] == len(ASSETS) * WINDOWS
        assert page["limit"] == 5
        assert page["offset"] == offset
        seen += [(i["window_key"], i["asset_id"]) for i in page["items"]]
        offset = page["next_offset"]
        pages += 1

    assert pages == 3  # 5 + 5 + 2
    assert len(seen) == len(set(seen)) == len(ASSETS) * WINDOWS
    starts = [window_key(i) for i in range(WINDOWS)]
    assert [starts.index(key) for key, _ in seen] == sorted((starts.index(key) for key, _ in seen), reverse=True)

    everything = client.get("/predictions/history").json()
    assert everything["total"] == len(MODELS) * len(ASSETS) * WINDOWS
    assert everything["limit"] == 100
    assert everything["next_offset"] is None

    past_the_end = client.get("/predictions/history", params={"offset": 500}).json()
    assert past_the_end["items"] == []
    assert past_the_end["next_offset"] is None
    assert past_the_end["total"] == len(MODELS) * len(ASSETS) * WINDOWS


def test_history_time_range_is_on_window_start(client: TestClient) -> None:
    # [window 1, window 3): windows 1 and 2.
    params = {"asset_id": "M002", "start": window_start(1).isoformat(), "end": window_start(3).isoformat()}
    page = client.get("/predictions/history", params=params).json()
    assert page["total"] == 2 * len(MODELS)
    assert {i["window_key"] for i in page["items"]} == {window_key(1), window_key(2)}

    # A naive time means UTC; another offset names the same instant.
    naive = {"start": window_start(1).replace(tzinfo=None).isoformat(), "end": "2025-03-01T08:03:00"}
    assert client.get("/predictions/history", params={"asset_id": "M002", **naive}).json()["total"] == 4
    cet = {"start": "2025-03-01T09:01:00+01:00", "end": "2025-03-01T09:03:00+01:00"}
    assert client.get("/predictions/history", params={"asset_id": "M002", **cet}).json()["total"] == 4

    only_start = client.get("/predictions/history", params={"start": window_start(WINDOWS - 1).isoformat()}).json()
    assert only_start["total"] == len(MODELS) * len(ASSETS)


@pytest.mark.parametrize(
    ("params", "bad_field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"start": "yesterday"}, "start"),
        ({"start": "2025-03-01T09:00:00Z", "end": "2025-03-01T08:00:00Z"}, "end"),
        ({"start": "2025-03-01T09:00:00+00:00", "end": "2025-03-01T10:00:00+01:00"}, "end"),  # the same instant
    ],
)
def test_bad_history_parameters_are_422_problems(client: TestClient, params: dict[str, Any], bad_field: str) -> None:
    body = assert_problem(client.get("/predictions/history", params=params), 422)
    assert body["instance"] == "/predictions/history"
    assert bad_field in body["detail"]
    assert [e["loc"] for e in body["errors"]] == [["query", bad_field]]


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    assert assert_problem(client.get("/no/such/route"), 404)["type"] == "about:blank"
    response = client.post("/predictions/latest")
    assert_problem(response, 405)
    assert response.headers["allow"] == "GET"


# ---- schemas and OpenAPI ----


def test_schemas_publish_every_payload_model(client: TestClient) -> None:
    schemas = client.get("/schemas").json()
    assert set(schemas) == set(PUBLISHED_MODELS)
    assert schemas == json_schemas()
    assert "Machine_ID" in schemas["MachineTelemetry"]["properties"]  # the export's column names

    one = client.get("/schemas/Prediction")
    assert one.status_code == 200
    assert one.json() == json_schemas()["Prediction"]

    body = assert_problem(client.get("/schemas/NoSuchPayload"), 404)
    assert "NoSuchPayload" in body["detail"]


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "Factory ML platform API"
    assert spec["info"]["version"]
    assert spec["info"]["description"]
    assert {"/health", "/predictions/latest", "/predictions/history", "/schemas", "/schemas/{name}"} <= set(
        spec["paths"]
    )
    history = spec["paths"]["/predictions/history"]["get"]
    assert {"200", "422", "503"} <= set(history["responses"])
    assert set(history["responses"]["503"]["content"]) == {PROBLEM_JSON}
    assert set(history["responses"]["422"]["content"]) == {PROBLEM_JSON}
    assert client.get("/docs").status_code == 200


# ---- health ----


@dataclass(frozen=True)
class Registry:
    tracking_uri: str
    client: MlflowClient
    versions: list[tuple[str, str]]  # (version, run id), oldest first


@pytest.fixture(scope="module")
def mlflow_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A real MLflow SQLite registry with two versions of energy_iforest (no alias yet).

    Uses MlflowClient with explicit URIs, never the fluent API's process-wide tracking URI.
    """
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment("serving-tests", artifact_location=(root / "artifacts").as_uri())
    client.create_registered_model("energy_iforest")
    versions = []
    for slope in (1.0, 2.0):
        model_dir = root / f"model-{slope}"
        model = LinearRegression().fit([[0.0], [1.0]], [0.0, slope])
        mlflow.sklearn.save_model(model, model_dir, pip_requirements=["scikit-learn"])
        run = client.create_run(experiment_id)
        client.log_artifacts(run.info.run_id, str(model_dir), "model")
        client.set_terminated(run.info.run_id)
        version = client.create_model_version(
            "energy_iforest", f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        )
        versions.append((str(version.version), run.info.run_id))
    return Registry(uri, client, versions)


def test_health_shows_the_champion_and_follows_a_promotion(
    tmp_path: Path, seeded_db_url: str, unreachable_mqtt_url: str, mlflow_registry: Registry
) -> None:
    (v1, run1), (v2, run2) = mlflow_registry.versions
    mlflow_registry.client.set_registered_model_alias("energy_iforest", CHAMPION_ALIAS, v1)
    clock = ManualClock()
    settings = make_settings(tmp_path, seeded_db_url, unreachable_mqtt_url, mlflow_registry.tracking_uri)
    app = create_app(settings, champion_ttl_s=30.0, registry_answer_within_s=WAIT_FOR_REGISTRY_S, clock=clock)

    with TestClient(app) as client:
        response = client.get("/health")
        assert response.status_code == 200
        models = response.json()["components"]["models"]
        assert models["status"] == "up"
        champion = models["models"]["energy_iforest"]
        assert (champion["status"], champion["version"], champion["run_id"]) == ("champion", v1, run1)
        assert champion["alias"] == CHAMPION_ALIAS
        assert datetime.fromisoformat(champion["created_at"]).tzinfo is not None

        mlflow_registry.client.set_registered_model_alias("energy_iforest", CHAMPION_ALIAS, v2)
        clock.advance(29)  # still within the TTL: the cached answer stands
        assert client.get("/health").json()["components"]["models"]["models"]["energy_iforest"]["version"] == v1

        clock.advance(2)  # past the TTL: re-resolved, no restart
        champion = client.get("/health").json()["components"]["models"]["models"]["energy_iforest"]
        assert (champion["version"], champion["run_id"]) == (v2, run2)

        mlflow_registry.client.set_registered_model_alias("energy_iforest", CHAMPION_ALIAS, v1)  # a rollback
        app.state.serving.expire_caches()  # what an operator hook would call: no need to wait for the TTL
        assert client.get("/health").json()["components"]["models"]["models"]["energy_iforest"]["version"] == v1


def test_health_with_a_model_that_has_no_champion(
    tmp_path: Path, seeded_db_url: str, unreachable_mqtt_url: str, mlflow_registry: Registry
) -> None:
    settings = make_settings(tmp_path, seeded_db_url, unreachable_mqtt_url, mlflow_registry.tracking_uri)
    app = create_app(settings, model_names=["rul_lstm"], registry_answer_within_s=WAIT_FOR_REGISTRY_S)
    with TestClient(app) as client:
        models = client.get("/health").json()["components"]["models"]
    assert models["status"] == "up"
    assert models["models"]["rul_lstm"]["status"] == "no_champion"
    assert models["models"]["rul_lstm"]["version"] is None


def test_health_reports_a_registry_that_is_down(
    tmp_path: Path,
    seeded_db_url: str,
    unreachable_mqtt_url: str,
    free_port: Callable[[], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once instead of retrying for minutes
    settings = make_settings(tmp_path, seeded_db_url, unreachable_mqtt_url, f"http://127.0.0.1:{free_port()}")
    with TestClient(create_app(settings, registry_answer_within_s=WAIT_FOR_REGISTRY_S)) as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    models = response.json()["components"]["models"]
    assert models["status"] == "down"
    assert models["models"]["energy_iforest"]["status"] == "unknown"
    assert "127.0.0.1" in models["models"]["energy_iforest"]["detail"]


class HangingRegistry(ThreadingHTTPServer):
    """A tracking server that takes requests but answers only when released (then with a 503)."""

    def __init__(self) -> None:
        self.received = threading.Event()
        self.release = threading.Event()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                registry.received.set()
                registry.release.wait(60)
                self.send_error(503)

            def log_message(self, *_args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def hanging_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[HangingRegistry]:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # once released, the lookup ends at once
    server = HangingRegistry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


def test_health_does_not_hang_on_a_slow_registry(
    tmp_path: Path, seeded_db_url: str, unreachable_mqtt_url: str, hanging_registry: HangingRegistry
) -> None:
    settings = make_settings(tmp_path, seeded_db_url, unreachable_mqtt_url, hanging_registry.url)
    with TestClient(create_app(settings, registry_answer_within_s=0.2)) as client:
        response = client.get("/health")
        assert hanging_registry.received.wait(30)  # the lookup did reach the registry and is still waiting
        assert not hanging_registry.release.is_set()
    assert response.status_code == 200
    champion = response.json()["components"]["models"]["models"]["energy_iforest"]
    assert champion["status"] == "unknown"
    assert "did not answer within 0.2 s" in champion["detail"]


def test_health_reports_an_unreachable_broker_but_still_answers_200(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    report = response.json()
    assert report["status"] == "degraded"
    broker = report["components"]["broker"]
    assert broker["status"] == "down"
    store = report["components"]["store"]
    assert (store["status"], store["backend"]) == ("up", "sqlite")
    assert store["predictions_stored"] == len(MODELS) * len(ASSETS) * WINDOWS


def test_health_does_not_create_a_missing_mlflow_database(client: TestClient, tmp_path: Path) -> None:
    models = client.get("/health").json()["components"]["models"]
    assert models["status"] == "down"
    assert "does not exist" in models["models"]["energy_iforest"]["detail"]
    assert not (tmp_path / "mlflow.db").exists()


def test_health_is_ok_with_a_real_broker(
    tmp_path: Path, seeded_db_url: str, mqtt_url: str, mlflow_registry: Registry
) -> None:
    settings = make_settings(tmp_path, seeded_db_url, mqtt_url, mlflow_registry.tracking_uri)
    with TestClient(create_app(settings, registry_answer_within_s=WAIT_FOR_REGISTRY_S)) as client:
        report = client.get("/health").json()
    assert report["components"]["broker"] == {
        "status": "up",
        "url": mqtt_url,
        "checked_at": report["components"]["broker"]["checked_at"],
    }
    assert report["status"] == "ok", report


def test_broker_probe_is_cached_until_its_ttl(
    tmp_path: Path, seeded_db_url: str, mqtt_url: str, unreachable_mqtt_url: str
) -> None:
    clock = ManualClock()
    app = create_app(make_settings(tmp_path, seeded_db_url, mqtt_url), broker_ttl_s=5.0, clock=clock)
    with TestClient(app) as client:
        first = client.get("/health").json()["components"]["broker"]
        clock.advance(4)
        assert client.get("/health").json()["components"]["broker"]["checked_at"] == first["checked_at"]
        clock.advance(1)
        assert client.get("/health").json()["components"]["broker"]["checked_at"] != first["checked_at"]


def test_broker_credentials_in_the_url_are_refused_and_masked(
    tmp_path: Path, seeded_db_url: str, free_port: Callable[[], int]
) -> None:
    url = f"mqtt://plant:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(ValueError) as refused:  # a password in a URL ends up in logs: settings send it elsewhere
        make_settings(tmp_path, seeded_db_url, url)
    assert "FACTORY_MQTT_USERNAME" in str(refused.value) and "s3cret" not in str(refused.value)
    assert mask_credentials(url) == url.replace("s3cret", "***")  # and /health masks any URL it shows


# ---- the store down, and back ----


def test_store_unavailable_is_503_and_recovers_without_restart(tmp_path: Path, unreachable_mqtt_url: str) -> None:
    # The store's directory can't be created while a plain file sits where it should be.
    blocker = tmp_path / "db"
    blocker.write_text("not a directory")
    settings = make_settings(tmp_path, f"sqlite:///{blocker / 'serving.db'}", unreachable_mqtt_url)

    with TestClient(create_app(settings)) as client:  # the app starts with the store down
        for path in ("/predictions/latest", "/predictions/history"):
            response = client.get(path)
            body = assert_problem(response, 503)
            assert body["title"] == "Serving store unavailable"
            assert response.headers["retry-after"]
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded"
        store = health.json()["components"]["store"]
        assert (store["status"], store["predictions_stored"]) == ("down", None)
        assert store["detail"]

        blocker.unlink()  # the store comes back

        assert client.get("/predictions/latest").json() == {"items": []}
        assert client.get("/health").json()["components"]["store"]["status"] == "up"


def test_store_lost_while_running_is_503_then_reopened(client: TestClient, seeded_db_url: str) -> None:
    assert len(client.get("/predictions/latest").json()["items"]) == len(MODELS) * len(ASSETS)

    # The database is wiped under the running API (e.g. restored empty).
    with sqlite3.connect(seeded_db_url.removeprefix("sqlite:///")) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert {"predictions", "model_promotions", "alerts", "alembic_version"} <= set(tables)
        for table in tables:
            db.execute(f"DROP TABLE {table}")

    # Within a second the latest answer may come from memory (AnswerCache); past it, the store is asked.
    assert client.get("/predictions/latest").status_code in {200, 503}
    client.app.state.serving.answers.expire()  # as a second passing would
    assert_problem(client.get("/predictions/latest"), 503)
    # The next request reopens the store, which re-applies the schema.
    client.app.state.serving.answers.expire()
    assert client.get("/predictions/latest").json() == {"items": []}
    assert client.get("/health").json()["components"]["store"]["predictions_stored"] == 0


# ---- the real server ----


def read_until(stream: Any, marker: str) -> list[str]:
    """Lines from a child's pipe up to the one holding `marker` (fails at EOF: the child died)."""
    lines: list[str] = []
    for line in stream:
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"{marker!r} never came; output was:\n{''.join(lines)}")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_runs_uvicorn_and_stops_cleanly_on_a_signal(
    tmp_path: Path,
    seeded_db_url: str,
    unreachable_mqtt_url: str,
    free_port: Callable[[], int],
    stop_signal: signal.Signals,
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "FACTORY_DATA_DIR": str(tmp_path / "data"),
        "FACTORY_API_HOST": "127.0.0.1",
        "FACTORY_API_PORT": str(port),
        "FACTORY_DB_URL": seeded_db_url,
        "FACTORY_MQTT_URL": unreachable_mqtt_url,
        "FACTORY_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONUNBUFFERED": "1",
    }
    code = "from factory_pipelines.settings import load_settings; from serving import serve; serve(load_settings())"
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        read_until(process.stderr, "Application startup complete")
        response = httpx.get(f"http://127.0.0.1:{port}/predictions/latest", params={"asset_id": "M001"}, timeout=10)
        assert response.status_code == 200
        assert len(response.json()["items"]) == len(MODELS)
        access = read_until(process.stdout, "/predictions/latest")
        assert '"GET /predictions/latest?asset_id=M001 HTTP/1.1" 200' in access[-1]

        process.send_signal(stop_signal)
        assert process.wait(timeout=30) == 0
        log = process.stderr.read()
        assert "Application shutdown complete" in log
        assert "Finished server process" in log
        assert "Traceback" not in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
