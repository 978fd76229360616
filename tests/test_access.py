"""API keys and roles on the real app: who may read, who may act, keys an admin creates and revokes."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from rich.console import Console
from starlette.routing import BaseRoute

from factory_pipelines.api_keys import Role, parse_api_keys
from factory_pipelines.launcher import DEMO_KEY_FILE, demo_access
from factory_pipelines.settings import FactorySettings, load_settings
from serving import create_app
from serving.app import RedactApiKeys, log_config

UNREACHABLE_MQTT = "mqtt://127.0.0.1:9"
VIEWER, OPERATOR, ADMIN = "viewer-key-aaaa1111", "operator-key-bbbb2222", "admin-key-cccc3333"
ALERT = {"level": "WARNING", "type": "RUL_LOW", "source": "pm_agent", "details": "R-07 RUL 40 h"}


def settings_for(tmp_path: Path, *, anonymous: bool, **extra: object) -> FactorySettings:
    return load_settings(
        data_dir=tmp_path / "data",
        mqtt_url=UNREACHABLE_MQTT,
        api_keys=f"{VIEWER}:viewer, {OPERATOR}:operator, {ADMIN}:admin",
        allow_anonymous_read=anonymous,
        **extra,
    )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(tmp_path, anonymous=False))) as client:
        yield client


def key(value: str) -> dict[str, str]:
    return {"X-API-Key": value}


def test_reads_need_a_key_unless_anonymous_reads_are_allowed(api: TestClient, tmp_path: Path) -> None:
    refused = api.get("/alerts")
    assert refused.status_code == 401 and refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "X-API-Key" in refused.json()["detail"]
    assert api.get("/alerts", headers=key(VIEWER)).status_code == 200
    assert api.get("/alerts", headers={"Authorization": f"Bearer {VIEWER}"}).status_code == 200
    assert api.get("/health").status_code == 200  # liveness stays open for probes

    with TestClient(create_app(settings_for(tmp_path, anonymous=True))) as open_api:
        assert open_api.get("/alerts").status_code == 200
        assert open_api.get("/predictions/latest").status_code == 200
        # A wrong key is refused even where anonymous reads are allowed: a client's typo shows at once.
        assert open_api.get("/alerts", headers=key("not-a-key-at-all")).status_code == 401
        assert open_api.post("/alert", json=ALERT).status_code == 401  # writes always need a key


def test_roles_gate_the_mutating_routes(api: TestClient) -> None:
    assert api.post("/alert", json=ALERT).status_code == 401
    as_viewer = api.post("/alert", json=ALERT, headers=key(VIEWER))
    assert as_viewer.status_code == 403 and "needs operator" in as_viewer.json()["detail"]
    handled = api.post("/alert", json=ALERT, headers=key(OPERATOR))
    assert handled.status_code == 200 and handled.json()["status"] == "handled"
    alert_id = handled.json()["alert_id"]
    assert api.post(f"/alerts/{alert_id}/ack", json={}, headers=key(VIEWER)).status_code == 403
    acked = api.post(f"/alerts/{alert_id}/ack", json={"comment": "on it"}, headers=key(ADMIN)).json()
    assert acked["acknowledged_by"] == "settings key 3"  # who, by key name, never by the key
    assert (
        api.post(f"/alerts/{alert_id}/clear", json={"by": "ana"}, headers=key(OPERATOR)).json()["cleared_by"] == "ana"
    )
    assert api.get("/api/keys", headers=key(OPERATOR)).status_code == 403


# Every route that is not a plain read, with the least role it needs. A route missing here fails the test
# below, so a new mutating route cannot ship without a decision on who may call it.
NON_GET_ROUTES: dict[tuple[str, str], Role] = {
    ("POST", "/alert"): Role.OPERATOR,
    ("POST", "/api/orchestrator/alert"): Role.OPERATOR,
    ("POST", "/alerts/{alert_id}/ack"): Role.OPERATOR,
    ("POST", "/alerts/{alert_id}/clear"): Role.OPERATOR,
    ("POST", "/api/robots/{robot_id}/command"): Role.OPERATOR,
    ("POST", "/api/keys"): Role.ADMIN,
    ("DELETE", "/api/keys/{key_id}"): Role.ADMIN,
    # POST only because they carry a body: they compute an answer and change nothing
    ("POST", "/api/ml/predict"): Role.VIEWER,
    ("POST", "/api/ml/batch_predict"): Role.VIEWER,
    ("POST", "/api/ppe/check"): Role.VIEWER,
}
KEYS_BY_ROLE = {Role.VIEWER: VIEWER, Role.OPERATOR: OPERATOR, Role.ADMIN: ADMIN}


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every route of the app, hidden ones included, also where FastAPI keeps included routers apart."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:
            yield from api_routes(included.routes)


def test_every_route_that_is_not_a_read_refuses_callers_below_its_role(api: TestClient) -> None:
    """Each non-GET route of the app (hidden ones too): no key 401, a lower role 403, its role gets past auth."""
    routes = {
        (method, route.path) for route in api_routes(api.app.routes) for method in route.methods - {"GET", "HEAD"}
    }  # type: ignore[attr-defined]
    assert routes == set(NON_GET_ROUTES), "decide the role of every new non-GET route in NON_GET_ROUTES"
    for (method, template), needed in NON_GET_ROUTES.items():
        path = template.format(alert_id="alert-x", robot_id="robot-x", key_id="key-x")
        anonymous = api.request(method, path, json={})
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        assert anonymous.headers["content-type"] == "application/problem+json"
        for role, value in KEYS_BY_ROLE.items():
            answer = api.request(method, path, json={}, headers=key(value))
            if role.allows(needed):
                assert answer.status_code not in (401, 403), (method, path, role, answer.text)
            else:
                assert answer.status_code == 403, (method, path, role, answer.text)
                assert f"needs {needed.value}" in answer.json()["detail"]


def test_an_admin_creates_uses_and_revokes_a_key(api: TestClient) -> None:
    created = api.post("/api/keys", json={"name": "line-3 HMI", "role": "operator"}, headers=key(ADMIN))
    assert created.status_code == 201
    body = created.json()
    secret, key_id = body["key"], body["key_id"]
    assert secret.startswith("fk_") and body["role"] == "operator" and body["created_by"] == "settings key 3"

    raised = api.post("/alert", json={**ALERT, "asset_id": "R-01"}, headers={"Authorization": f"Bearer {secret}"})
    assert raised.status_code == 200
    acked = api.post(f"/alerts/{raised.json()['alert_id']}/ack", json={}, headers=key(secret)).json()
    assert acked["acknowledged_by"] == "line-3 HMI"

    listed = api.get("/api/keys", headers=key(ADMIN)).json()["items"]
    assert [(k["name"], k["role"], k["source"]) for k in listed] == [
        ("settings key 1", "viewer", "settings"),
        ("settings key 2", "operator", "settings"),
        ("settings key 3", "admin", "settings"),
        ("line-3 HMI", "operator", "store"),
    ]
    assert secret not in api.get("/api/keys", headers=key(ADMIN)).text
    assert not any(value in api.get("/api/keys", headers=key(ADMIN)).text for value in (VIEWER, OPERATOR, ADMIN))

    revoked = api.delete(f"/api/keys/{key_id}", headers=key(ADMIN)).json()
    assert revoked["revoked_by"] == "settings key 3" and revoked["revoked_at"]
    assert api.get("/alerts", headers=key(secret)).status_code == 401
    assert api.delete("/api/keys/key-nope", headers=key(ADMIN)).status_code == 404
    assert api.post("/api/keys", json={"name": "x", "role": "root"}, headers=key(ADMIN)).status_code == 422


def test_keys_never_reach_logs_or_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(settings_for(tmp_path, anonymous=False))) as api:
        wrong = api.get("/alerts", headers=key("wrong-key-zzzz9999"))
        api.get("/alerts", headers=key(VIEWER))
    assert "wrong-key-zzzz9999" not in wrong.text
    assert not any(value in caplog.text for value in (VIEWER, "wrong-key-zzzz9999"))
    with pytest.raises(ValueError) as refused:
        load_settings(api_keys="secret-value-1234567:root")
    assert "secret-value-1234567" not in str(refused.value) and "entry 1" in str(refused.value)


def test_openapi_documents_both_credentials(api: TestClient) -> None:
    schemes = api.get("/openapi.json").json()["components"]["securitySchemes"]
    assert {scheme["type"] for scheme in schemes.values()} == {"http", "apiKey"}


def test_cors_origins_are_configurable(tmp_path: Path) -> None:
    origin = "https://hmi.plant.example"
    with TestClient(create_app(settings_for(tmp_path, anonymous=True, cors_origins=[origin]))) as api:
        allowed = api.options("/alerts", headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
        assert allowed.headers["access-control-allow-origin"] == origin
        other = api.get("/alerts", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("just-a-key-without-role", "must be KEY:ROLE"),
        ("abcdefghijklmn:root", "role 'root' is not one of viewer, operator, admin"),
        ("short:viewer", "at least 12 characters"),
    ],
)
def test_bad_key_settings_are_refused_by_entry(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_api_keys(text)
    assert parse_api_keys(" a-long-enough-key:admin ,, ") == {"a-long-enough-key": Role.ADMIN}
    assert Role.ADMIN.allows(Role.OPERATOR) and not Role.VIEWER.allows(Role.OPERATOR)


def test_the_local_demo_opens_reads_and_makes_an_admin_key_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FACTORY_ALLOW_ANONYMOUS_READ")
    monkeypatch.delenv("FACTORY_API_KEYS")
    console = Console(record=True, width=200)
    settings = load_settings(data_dir=tmp_path / "data")
    first = demo_access(settings, console)
    assert first["FACTORY_ALLOW_ANONYMOUS_READ"] == "true"
    key_value, role = first["FACTORY_API_KEYS"].rsplit(":", 1)
    assert role == "admin" and (tmp_path / "data" / DEMO_KEY_FILE).stat().st_mode & 0o077 == 0
    assert demo_access(settings, console)["FACTORY_API_KEYS"] == first["FACTORY_API_KEYS"]  # the same key next time
    user, password, user_role = first["FACTORY_OPCUA_USERS"].split(":")  # OPC UA stays secure, with a demo operator
    assert (user, user_role) == ("operator", "operator") and len(password) >= 16
    said = console.export_text()
    assert "anyone who reaches the API may read" in said and key_value not in said
    # What the operator set explicitly wins.
    explicit = load_settings(
        data_dir=tmp_path / "data",
        allow_anonymous_read=False,
        api_keys=f"{OPERATOR}:operator",
        opcua_users="plc-reader:a-long-password:viewer",
    )
    assert demo_access(explicit, console) == {}


def test_keys_in_websocket_urls_are_blanked_in_the_server_log() -> None:
    handler_filters = log_config()["handlers"]
    assert all("redact_api_keys" in handler["filters"] for handler in handler_filters.values())
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5000", f"/ws?api_key={OPERATOR}&channel=all"), None,
    )  # fmt: skip
    assert RedactApiKeys().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "WebSocket /ws?api_key=***&channel=all" [accepted]'
