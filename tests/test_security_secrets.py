"""Secrets never leave the process that uses them: not in logs, errors, MLflow, Dagster or the data dir.

Every secret setting gets a distinctive value through the environment (as in production), then the
platform does real work that touches each of them: it trains and registers a model (MLflow), scores a
window and raises a CRITICAL alert that is planned with Gemini and texted through Twilio (both stand-ins
on loopback, reached by the real clients), writes a shift backlog with Gemini, answers API calls with
good and wrong keys, and fails: a Twilio that refuses the token, a Gemini that answers 400. Afterwards
the test greps everything the platform wrote or said for every secret: log records at DEBUG, stdout
and stderr, API answers, `factory settings`, every file under the data dir and the Dagster instance
(Parquet decoded), MLflow params and tags, Dagster run configs, tags and event metadata, and the code
location's snapshot (what the Dagster UI shows of resource config).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import mlflow
import polars as pl
import pytest
from dagster._core.remote_representation.external_data import RepositorySnap
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.cli import app as factory_cli
from factory_pipelines.definitions import build_definitions
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.store import ServingStore
from sensors.alert_sensor import build_prediction_alerts_sensor
from serving import create_app
from tests.gemini_standin import GeminiStandIn
from tests.machine_windows import CRITICAL_ENERGY_RULES, SPIKE, SPIKE_KW, write_sealed_window
from tests.twilio_standin import TwilioStandIn

TWILIO_TOKEN = "twilio-token-LEAKCHECK-7d1e0b"
GEMINI_KEY = "gemini-key-LEAKCHECK-93ab51"
ADMIN_KEY = "api-admin-LEAKCHECK-5c2f77"
OPERATOR_KEY = "api-operator-LEAKCHECK-1a9d"
OPCUA_PASSWORD = "opcua-pass-LEAKCHECK-e4"
MQTT_PASSWORD = "mqtt-pass-LEAKCHECK-0c"
WRONG_KEY = "api-wrong-LEAKCHECK-ffff"
SECRETS = {
    "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
    "GEMINI_API_KEY": GEMINI_KEY,
    "admin API key": ADMIN_KEY,
    "operator API key": OPERATOR_KEY,
    "OPC UA password": OPCUA_PASSWORD,
    "FACTORY_MQTT_PASSWORD": MQTT_PASSWORD,
    "a caller's wrong API key": WRONG_KEY,
}
PLAN = {"summary": "Check the drive's power draw.", "steps": ["Read the meter", "Compare with the work done"]}


@pytest.fixture
def twilio() -> Iterator[TwilioStandIn]:
    with TwilioStandIn(auth_token=TWILIO_TOKEN) as standin:
        yield standin


@pytest.fixture
def settings(
    tmp_path: Path, mqtt_url: str, twilio: TwilioStandIn, gemini: GeminiStandIn, monkeypatch: pytest.MonkeyPatch
) -> FactorySettings:
    rules = tmp_path / "rules.yaml"
    rules.write_text(CRITICAL_ENERGY_RULES)
    environment = {
        "FACTORY_DATA_DIR": str(tmp_path / "data"),
        "FACTORY_MQTT_URL": mqtt_url,
        "FACTORY_MQTT_USERNAME": "platform",
        "FACTORY_MQTT_PASSWORD": MQTT_PASSWORD,  # the loopback broker allows anonymous clients: ignored there
        "FACTORY_WINDOW_SECONDS": "10",
        "FACTORY_ALERT_RULES_FILE": str(rules),
        "FACTORY_API_KEYS": f"{ADMIN_KEY}:admin,{OPERATOR_KEY}:operator",
        "FACTORY_ALLOW_ANONYMOUS_READ": "false",
        "FACTORY_OPCUA_USERS": f"engineer:{OPCUA_PASSWORD}:operator",
        "TWILIO_ACCOUNT_SID": twilio.account_sid,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_FROM_NUMBER": "+15550000000",
        "TWILIO_TO_NUMBERS": "+15551110001",
        "TWILIO_API_BASE_URL": twilio.base_url,
        "GEMINI_API_KEY": GEMINI_KEY,
        "GEMINI_BASE_URL": gemini.url,
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no stray .env of the checkout
    settings = load_settings()
    settings.ensure_dirs()
    return settings


def leaks(text: str, where: str) -> list[str]:
    return [f"{name} in {where}" for name, value in SECRETS.items() if value in text]


def file_text(path: Path) -> str:
    """What a file holds, readable: Parquet and Arrow decoded (they compress strings), the rest as bytes."""
    if path.suffix == ".parquet":
        return pl.read_parquet(path).write_csv()
    if path.suffix == ".arrow":
        return pl.read_ipc(path).write_csv()
    return path.read_bytes().decode("utf-8", errors="replace")


def do_real_work(settings: FactorySettings, instance: dg.DagsterInstance, gemini: GeminiStandIn) -> None:
    """Train, score, alert (Gemini plan, Twilio text) and write a shift backlog with Gemini."""
    defs = build_definitions(settings)
    trained = defs.resolve_job_def("energy_iforest_training_job").execute_in_process(
        instance=instance, run_config={"ops": {"energy_iforest": {"config": {"n_estimators": 50}}}}
    )
    assert trained.success
    key = write_sealed_window(
        settings,
        datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5),
        seed=1,
        spike=SPIKE,
        spike_kw=SPIKE_KW,
    )
    instance.add_dynamic_partitions("telemetry_windows", [key])
    assert (
        defs.resolve_job_def("window_predictions_job").execute_in_process(instance=instance, partition_key=key).success
    )

    gemini.reply = lambda: (
        200,
        json.dumps({"candidates": [{"content": {"parts": [{"text": json.dumps(PLAN)}]}}]}).encode(),
    )
    tick = build_prediction_alerts_sensor(minimum_interval_seconds=5)(
        dg.build_sensor_context(instance=instance, definitions=defs)
    )
    assert isinstance(tick, dg.SensorResult) and tick.run_requests
    for request in tick.run_requests:
        assert (
            defs.resolve_job_def("orchestrator_job")
            .execute_in_process(
                instance=instance, partition_key=request.partition_key, run_config=request.run_config, tags=request.tags
            )
            .success
        )

    shift = settings.shift_calendar.shift_at(datetime.now(UTC) - timedelta(hours=9))
    backlog = defs.resolve_job_def("shift_backlog_job").execute_in_process(instance=instance, partition_key=shift.key)
    assert backlog.success


@pytest.mark.timeout(180)
def test_no_secret_reaches_logs_errors_mlflow_dagster_or_the_data_dir(
    settings: FactorySettings,
    twilio: TwilioStandIn,
    gemini: GeminiStandIn,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    found: list[str] = []
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        do_real_work(settings, instance, gemini)
        assert len(twilio.messages) == 1 and gemini.requests, "the work must really have used both providers"

        # the API: good and wrong keys, an alert texted through Twilio, then Twilio and Gemini failing
        with TestClient(create_app(settings)) as api:
            answers = [
                api.get("/alerts", headers={"X-API-Key": ADMIN_KEY}),
                api.get("/alerts", headers={"X-API-Key": WRONG_KEY}),
                api.get("/alerts", headers={"Authorization": f"Bearer {WRONG_KEY}"}),
                api.get(f"/predictions/latest?api_key={WRONG_KEY}"),
                api.post("/alert", json={"level": "CRITICAL", "type": "RUL_LOW", "source": "pm", "details": "R-1"}),
                api.post(
                    "/alert",
                    json={"level": "CRITICAL", "type": "RUL_LOW", "source": "pm", "details": "R-2 bearing"},
                    headers={"X-API-Key": OPERATOR_KEY},
                ),
                api.get("/api/keys", headers={"X-API-Key": ADMIN_KEY}),
                api.get("/health"),
            ]
            twilio.reject_next_posts(1, status=401, code=20003, message="Authenticate")
            gemini.reply = lambda: (
                400,
                b'{"error": {"code": 400, "message": "API key not valid", "status": "INVALID_ARGUMENT"}}',
            )
            failing = api.post(
                "/alert",
                json={"level": "CRITICAL", "type": "PPE_VIOLATION", "source": "ppe", "details": "zone 3, no helmet"},
                headers={"X-API-Key": OPERATOR_KEY},
            )
            answers.append(failing)
            answers.append(api.get(f"/alerts/{failing.json()['alert_id']}", headers={"X-API-Key": ADMIN_KEY}))
        assert [a.status_code for a in answers[:3]] == [200, 401, 401]
        for answer in answers:
            found += leaks(answer.text, f"the answer to {answer.request.method} {answer.request.url.path}")

        # MLflow: params and tags of every run
        client = mlflow.MlflowClient(settings.resolved_mlflow_uri)
        for experiment in client.search_experiments():
            for run in client.search_runs([experiment.experiment_id]):
                found += leaks(json.dumps({**run.data.params, **run.data.tags}), f"MLflow run {run.info.run_id}")

        # Dagster: run configs, tags and every event of every run; the code location's snapshot
        for run in instance.get_runs():
            found += leaks(json.dumps(run.run_config, default=str) + json.dumps(run.tags), f"Dagster run {run.run_id}")
            for entry in instance.all_logs(run.run_id):
                found += leaks(dg.serialize_value(entry), f"an event of Dagster run {run.job_name}")
        snapshot = RepositorySnap.from_def(build_definitions(settings).get_repository_def())
        found += leaks(dg.serialize_value(snapshot), "the code location snapshot (Dagster UI)")

    shown = CliRunner().invoke(factory_cli, ["settings"])
    assert shown.exit_code == 0, shown.output
    found += leaks(shown.output, "`factory settings`")

    # everything on disk: data dir (stores, MLflow, windows, outbox, backlogs) and the Dagster instance
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.name != "rules.yaml"):
        found += leaks(file_text(path), str(path.relative_to(tmp_path)))

    captured = capfd.readouterr()
    # the test's own HTTP client logs the URLs it calls (with the wrong key it sent): not the platform's log
    platform_records = [r for r in caplog.records if "http://testserver/" not in r.getMessage()]
    found += leaks("\n".join(r.getMessage() for r in platform_records), "log records")
    found += leaks(captured.out + captured.err, "stdout/stderr")
    assert not found, "\n".join(found)

    # and the work was real: the alerts are stored with their texts
    store = ServingStore(settings.resolved_db_url)
    try:
        alerts = AlertBook(store.engine).list_alerts().items
    finally:
        store.dispose()
    by_type = {alert.type: alert for alert in alerts}
    assert set(by_type) == {"ENERGY_OPTIMIZATION", "RUL_LOW", "PPE_VIOLATION"}
    failed = by_type["PPE_VIOLATION"]  # the one Twilio refused and Gemini answered 400 for
    assert failed.plan is not None and failed.plan.written_by == "rules" and failed.plan.fallback_reason
    [refused] = AlertBook(ServingStore(settings.resolved_db_url).engine).notifications(failed.alert_id)
    assert refused.status.value == "failed"
