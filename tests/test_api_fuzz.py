"""Schemathesis against the API's own OpenAPI document: no generated request gets a 5xx.

Every operation gets requests generated from its schema (valid and edge-case values), sent with an
admin key so the routes' own code runs, not only the access check. The API runs as in production:
champions registered for the models it serves (tiny ones, tests/tiny_champions.py), the session's
Mosquitto for live telemetry and commands, a serving store on disk. So a 503 would be a bug here too,
not an honest "not ready". This found an unbounded `offset` that SQLite could not bind.
"""

from __future__ import annotations

from collections.abc import Iterator

import mlflow
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings

from factory_pipelines.broker import RunningBroker
from factory_pipelines.settings import load_settings
from serving import create_app
from tests.tiny_champions import train_tiny_champions

ADMIN_KEY = "fuzz-admin-key-0001"


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory: pytest.TempPathFactory, mqtt_broker: RunningBroker) -> Iterator[FastAPI]:
    champions = train_tiny_champions(tmp_path_factory.mktemp("fuzz-registry"))
    app_settings = load_settings(
        data_dir=tmp_path_factory.mktemp("fuzz-data"),
        mqtt_url=mqtt_broker.url,
        mlflow_tracking_uri=champions.tracking_uri,
        api_keys=f"{ADMIN_KEY}:admin",
        allow_anonymous_read=False,
    )
    app_settings.ensure_dirs()
    yield create_app(app_settings, registry_answer_within_s=30.0)
    mlflow.set_tracking_uri(None)


@pytest.mark.timeout(600)
def test_no_generated_request_gets_a_server_error(fuzzed_app: FastAPI) -> None:
    """Every operation, up to 25 generated requests each; all failures are collected, then reported."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)
    failures: list[str] = []
    operations = 0
    for loaded in schema.get_all_operations():
        operation = loaded.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def answers_without_a_server_error(case: schemathesis.Case) -> None:
            response = case.call(headers={"X-API-Key": ADMIN_KEY})
            assert response.status_code < 500, (case.formatted_path, response.status_code, response.text[:300])

        try:
            answers_without_a_server_error()
        except (AssertionError, ExceptionGroup) as failure:  # hypothesis groups distinct failures
            failures.append(f"{operation.method.upper()} {operation.path}: {failure}")
    assert operations > 30, f"only {operations} operations in the OpenAPI document"
    assert not failures, "\n".join(failures)
