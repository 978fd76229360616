"""`GET /ready` (readiness by component) and `GET /metrics` (Prometheus text) on the real app."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from factory_pipelines.model_registry import ensure_experiment
from factory_pipelines.settings import load_settings
from serving import create_app

UNREACHABLE_MQTT = "mqtt://127.0.0.1:9"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_ready_follows_the_broker_while_health_stays_live(tmp_path: Path, mqtt_url: str) -> None:
    settings = load_settings(data_dir=tmp_path / "a", mqtt_url=mqtt_url)
    settings.ensure_dirs()
    # A registry that answers (it holds no champion yet: that alone does not make the API unready).
    ensure_experiment(settings.resolved_mlflow_uri, "readiness", settings.mlflow_artifacts_dir)
    with TestClient(create_app(settings)) as api:
        answer = api.get("/ready")
        assert answer.status_code == 200, answer.text
        assert answer.json()["components"]["broker"]["status"] == "up"
        assert answer.json()["components"]["models"]["models"]["energy_iforest"]["status"] == "no_champion"
    with TestClient(create_app(load_settings(data_dir=tmp_path / "b", mqtt_url=UNREACHABLE_MQTT))) as api:
        unready = api.get("/ready")
        assert unready.status_code == 503
        assert unready.json()["status"] == "degraded" and unready.json()["components"]["broker"]["status"] == "down"
        assert api.get("/health").status_code == 200  # alive all the same


def test_metrics_count_requests_by_route_template(tmp_path: Path) -> None:
    with TestClient(create_app(load_settings(data_dir=tmp_path / "d", mqtt_url=UNREACHABLE_MQTT))) as api:
        for alert_id in ("al-1", "al-2", "al-3"):
            assert api.get(f"/alerts/{alert_id}").status_code == 404
        api.get("/alerts")
        api.get("/no/such/path")
        text = api.get("/metrics").text
    figures = samples(text)
    by_template = (("method", "GET"), ("route", "/alerts/{alert_id}"), ("status", "404"))
    assert figures[("factory_api_requests_total", by_template)] == 3  # one series for every id
    assert figures[("factory_api_requests_total", (("method", "GET"), ("route", "/alerts"), ("status", "200")))] == 1
    assert figures[("factory_api_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    assert figures[("factory_api_request_seconds_count", (("method", "GET"), ("route", "/alerts/{alert_id}")))] == 3
    assert not any("al-1" in str(labels) for _, labels in figures)
    assert figures[("factory_ws_connections", ())] == 0  # the live hub's figures are there before any client


def test_metrics_need_a_reader(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "d", mqtt_url=UNREACHABLE_MQTT, allow_anonymous_read=False)
    with TestClient(create_app(settings)) as api:
        assert api.get("/metrics").status_code == 401
