"""`factory lineage ALERT_ID`: from an alert back to its window, model version, MLflow run, datasets and Dagster runs.

A real training run (Dagster in-process, MLflow store, registered version) produces the model; a
prediction of that version and an alert raised on it go into the serving store; the walk must find
each step in the system that owns it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from factory_pipelines.alert_book import AlertBook
from factory_pipelines.alert_model import AlertCandidate, AlertLineage
from factory_pipelines.dagster_instance import run_training_job
from factory_pipelines.lineage import walk_lineage
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.store import ServingStore
from factory_pipelines.telemetry import Prediction, Severity
from factory_pipelines.windows import sealed_window_path, window_key

START = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[FactorySettings, str, str]:
    """An energy_iforest version trained through its Dagster job; (settings, version, Dagster run id)."""
    settings = load_settings(data_dir=tmp_path_factory.mktemp("lineage") / "data", mqtt_url="mqtt://127.0.0.1:9")
    run = run_training_job(settings, "energy_iforest", training_config={"n_estimators": 20})
    assert run.success, run
    return settings, str(run.materialization["model_version"]), run.run_id


def raise_alert(settings: FactorySettings, version: str, mlflow_run_id: str, key: str) -> str:
    prediction = Prediction(
        model_name="energy_iforest",
        model_version=version,
        asset_id="machine-02",
        window_key=key,
        score=0.81,
        label="anomaly",
        produced_at=START + timedelta(seconds=70),
        window_start=START,
        window_end=START + timedelta(minutes=1),
        mlflow_run_id=mlflow_run_id,
        dagster_run_id="scoring-run-that-was-deleted",
        threshold=0.62,
    )
    store = ServingStore(settings.resolved_db_url)
    try:
        store.upsert_predictions([prediction])
        outcome = AlertBook(store.engine).raise_or_repeat(
            AlertCandidate(
                rule="energy_anomaly",
                type="ENERGY_ANOMALY",
                severity=Severity.WARNING,
                source="energy_iforest",
                asset_id="machine-02",
                message="power draw anomaly",
                dedup_key=f"energy:{key}",
                observed_at=START + timedelta(minutes=1),
                lineage=AlertLineage(
                    window_key=key,
                    asset_key="energy_anomaly_predictions",
                    model_name="energy_iforest",
                    model_version=version,
                    mlflow_run_id=mlflow_run_id,
                    dagster_run_id=prediction.dagster_run_id,
                    prediction_id=prediction.prediction_id,
                ),
                evidence={"score": 0.81, "threshold": 0.62},
            ),
            now=START + timedelta(minutes=1, seconds=30),
        )
    finally:
        store.dispose()
    return outcome.alert.alert_id


def test_the_walk_finds_every_step_where_it_is_kept(trained: tuple[FactorySettings, str, str]) -> None:
    settings, version, training_run = trained
    from mlflow.tracking import MlflowClient

    mlflow_run_id = MlflowClient(settings.resolved_mlflow_uri).get_model_version("energy_iforest", version).run_id
    key = window_key(START, "collector-1")
    alert_id = raise_alert(settings, version, mlflow_run_id, key)
    sealed = sealed_window_path(settings.windows_dir, key)

    before = walk_lineage(settings, alert_id)
    assert before.step("window").found is False  # no sealed file yet: said, not hidden
    sealed.parent.mkdir(parents=True, exist_ok=True)
    sealed.write_bytes(b"PAR1")
    walked = walk_lineage(settings, alert_id)

    kinds = [step.kind for step in walked.steps]
    assert kinds[:5] == ["alert", "prediction", "window", "model_version", "mlflow_run"]
    assert walked.step("prediction").ref == f"energy_iforest/{key}/machine-02"
    assert walked.step("window").found and walked.step("window").details["sealed window"] == str(sealed)
    assert walked.step("model_version").ref == f"models:/energy_iforest/{version}"
    run_step = walked.step("mlflow_run")
    assert run_step.ref == mlflow_run_id and run_step.details["dagster_run_id"] == training_run
    datasets = [s for s in walked.steps if s.kind == "dataset"]
    assert datasets and all(s.ref for s in datasets)  # every training input with its digest
    assert walked.step("code_version") is not None
    dagster = {s.summary.split(":")[0]: s for s in walked.steps if s.kind == "dagster_run"}
    assert dagster["trained the model"].found and "energy_iforest_training_job" in dagster["trained the model"].summary
    assert dagster["scored the window"].found is False  # a run the instance no longer has is reported as such


def test_factory_lineage_prints_text_and_json(trained: tuple[FactorySettings, str, str]) -> None:
    settings, version, _ = trained
    from mlflow.tracking import MlflowClient

    run_id = MlflowClient(settings.resolved_mlflow_uri).get_model_version("energy_iforest", version).run_id
    alert_id = raise_alert(settings, version, run_id, window_key(START + timedelta(minutes=5), "collector-1"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY_", "MLFLOW_"))}
    env |= {"FACTORY_DATA_DIR": str(settings.data_path), "FACTORY_MQTT_URL": settings.mqtt_url}

    def factory(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "factory_pipelines.cli", "lineage", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    text = factory(alert_id)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"lineage of alert {alert_id}")
    assert f"{version}, registered from run {run_id}" in text.stdout
    assert "mlflow_run: MLflow run" in text.stdout and "dataset:" in text.stdout
    document = json.loads(factory(alert_id, "--json").stdout)
    assert document["alert_id"] == alert_id and document["steps"][0]["kind"] == "alert"
    missing = factory("al-does-not-exist")
    assert missing.returncode == 1 and "no alert 'al-does-not-exist'" in missing.stderr
