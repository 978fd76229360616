"""Schemathesis against the API's own OpenAPI document: no generated request makes the app fail.

Every operation gets requests generated from its schema (valid and edge-case values, with an
admin key so the routes' own code runs, not only the access check). A 503 is an honest answer
here (no champion model is trained in this test, the store may be busy); a 500 or an exception
escaping the app is a bug. This found an unbounded `offset` that SQLite could not bind.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

from factory_pipelines.settings import load_settings
from serving import create_app

ADMIN_KEY = "fuzz-admin-key-0001"


def fuzzed_app(data_dir: Path) -> FastAPI:
    app_settings = load_settings(
        data_dir=data_dir, mqtt_url="mqtt://127.0.0.1:9", api_keys=f"{ADMIN_KEY}:admin", allow_anonymous_read=False
    )
    app_settings.ensure_dirs()
    return create_app(app_settings)


# Loaded when pytest collects this file (schemathesis parametrizes from the document), so its own temp dir.
schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app(Path(tempfile.mkdtemp(prefix="api-fuzz-"))))


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_makes_the_api_fail(case: schemathesis.Case) -> None:
    response = case.call(headers={"X-API-Key": ADMIN_KEY})
    assert response.status_code != 500, (case.method, case.formatted_path, response.text[:300])
