"""The window assets and the training asset on a real Dagster instance, MLflow store, broker and serving store."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from assets.prediction_output import PREDICTION_COLUMNS
from factory_pipelines import energy_model as em
from factory_pipelines.dagster_instance import ensure_energy_champion, write_dagster_yaml
from factory_pipelines.definitions import build_definitions
from factory_pipelines.model_registry import CHAMPION_ALIAS, champion_info, use_tracking_uri
from factory_pipelines.mqtt import connect_and_wait, make_client
from factory_pipelines.settings import FactorySettings
from factory_pipelines.store import ServingStore
from sensors.window_sensor import windows_run_request
from tests.machine_windows import MACHINES, SPIKE, write_sealed_window


class PredictionSubscriber:
    """Collects what arrives on predictions/energy_iforest/#; `wait_for(n)` returns when n arrived."""

    def __init__(self, url: str) -> None:
        self.topics: list[str] = []
        self._arrived = threading.Condition()
        self.client = make_client("test-predictions-subscriber")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        connect_and_wait(self.client, url)
        self.client.subscribe(f"predictions/{em.MODEL_NAME}/#", qos=1)
        assert subscribed.wait(10), "broker did not acknowledge the subscription"

    def _on_message(self, _c: object, _u: object, message: object) -> None:
        with self._arrived:
            self.topics.append(message.topic)  # type: ignore[attr-defined]
            self._arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.topics) >= count, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def subscriber(mqtt_url: str) -> Iterator[PredictionSubscriber]:
    sub = PredictionSubscriber(mqtt_url)
    yield sub
    sub.close()


def train(
    defs: dg.Definitions, instance: dg.DagsterInstance, dataset: dict[str, object] | None = None, **config: object
) -> dg.ExecuteInProcessResult:
    run_config = {
        "ops": {
            "energy_iforest_dataset": {"config": dataset or {}},
            "energy_iforest": {"config": {"n_estimators": 50, "contamination": 0.02, **config}},
        }
    }
    result = defs.resolve_job_def("energy_iforest_training_job").execute_in_process(
        instance=instance, run_config=run_config
    )
    assert result.success
    return result


def metadata_of(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)]
    return {name: value.value for name, value in events[-1].materialization.metadata.items()}


def test_windows_of_one_run_are_scored_stored_published_and_retraining_promotes(
    factory_settings: FactorySettings,
    instance: dg.DagsterInstance,
    subscriber: PredictionSubscriber,
    free_port: Callable[[], int],
) -> None:
    settings = factory_settings
    defs = build_definitions(settings)

    # first start: no feature history, so the simulated baseline; version 1 becomes champion
    first = metadata_of(train(defs, instance), "energy_iforest")
    assert first["training_source"] == em.TRAINING_SOURCE_BASELINE
    assert first["model_version"] == "1" and first["promoted"] is True
    assert first["promotion"]["previous_champion"] is None  # type: ignore[index]
    assert first["promotion"]["candidate_version"] == "1"  # type: ignore[index]
    champion = champion_info(settings.resolved_mlflow_uri, em.MODEL_NAME)
    assert champion is not None and champion.version == "1" and champion.alias == CHAMPION_ALIAS
    assert list(settings.mlflow_artifacts_dir.rglob("MLmodel")), "artifacts belong under the data dir, not ./mlruns"

    # three sealed windows, the middle one with an energy spike, handed over as one range run
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    keys = [
        write_sealed_window(settings, start + timedelta(seconds=i * settings.window_seconds), seed=i, spike=spike)
        for i, spike in enumerate([None, SPIKE, None])
    ]
    instance.add_dynamic_partitions("telemetry_windows", keys)
    request = windows_run_request(keys)
    job = defs.resolve_job_def("window_predictions_job")
    result = job.execute_in_process(instance=instance, tags=request.tags)
    assert result.success

    materialized = {(e.asset_key.to_user_string(), e.partition) for e in result.get_asset_materialization_events()}
    for asset in ("telemetry_window", "machine_features", "energy_anomaly_predictions"):
        assert {(asset, key) for key in keys} <= materialized
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("machine_rows_valid", True)]
    predictions_meta = metadata_of(result, "energy_anomaly_predictions")
    assert predictions_meta["windows"] == 3 and predictions_meta["predictions"] == 3 * MACHINES
    assert predictions_meta["model_version"] == "1"

    # Parquet per window partition
    for key in keys:
        frame = pl.read_parquet(settings.predictions_dir / em.MODEL_NAME / f"{key}.parquet")
        assert dict(frame.schema) == {**PREDICTION_COLUMNS, "threshold": pl.Float64()}
        assert sorted(frame["asset_id"]) == [f"machine-{m}" for m in range(MACHINES)]
        assert (settings.features_dir / f"{key}.parquet").is_file()
    spiky = pl.read_parquet(settings.predictions_dir / em.MODEL_NAME / f"{keys[1]}.parquet")
    assert spiky.sort("score", descending=True)["asset_id"][0] == SPIKE

    # rows in the serving store, with their lineage
    store = ServingStore(settings.resolved_db_url)
    try:
        page = store.prediction_history(model_name=em.MODEL_NAME, limit=100)
        assert page.total == 3 * MACHINES
        assert {p.model_version for p in page.items} == {"1"}
        assert {p.mlflow_run_id for p in page.items} == {champion.run_id}
        assert {p.dagster_run_id for p in page.items} == {result.run_id}
        first_window = [p for p in page.items if p.window_key == keys[0]][0]
        assert first_window.window_start == start
        assert first_window.window_end == start + timedelta(seconds=settings.window_seconds)
    finally:
        store.dispose()

    # and live on MQTT
    assert subscriber.wait_for(3 * MACHINES)
    assert f"predictions/{em.MODEL_NAME}/{SPIKE}" in subscriber.topics

    # with the broker gone the run still succeeds (the store and files are the record)
    dead_broker = settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{free_port()}"})
    again = build_definitions(dead_broker).resolve_job_def("window_predictions_job")
    rerun = again.execute_in_process(instance=instance, partition_key=keys[0])
    assert rerun.success
    assert metadata_of(rerun, "energy_anomaly_predictions")["published"] == 0

    # retraining on the (now sufficient) history, promoted by force, makes version 2 the champion
    second = metadata_of(
        train(defs, instance, dataset={"min_history_windows": 3}, force_promotion=True), "energy_iforest"
    )
    assert second["training_source"] == em.TRAINING_SOURCE_HISTORY
    assert second["model_version"] == "2"
    assert second["promotion"]["previous_champion"] == "1"  # type: ignore[index]
    assert second["promotion"]["forced"] is True  # type: ignore[index]
    champion = champion_info(settings.resolved_mlflow_uri, em.MODEL_NAME)
    assert champion is not None and champion.version == "2"
    assert champion.metrics["training_rows"] == 3 * MACHINES

    # and the next prediction run serves the new champion, without a restart
    rescored = job.execute_in_process(instance=instance, partition_key=keys[2])
    assert rescored.success
    assert metadata_of(rescored, "energy_anomaly_predictions")["model_version"] == "2"


def test_gate_refuses_a_worse_candidate_and_records_every_decision(
    factory_settings: FactorySettings, instance: dg.DagsterInstance
) -> None:
    settings = factory_settings
    defs = build_definitions(settings)
    train(defs, instance)
    # a forest told that almost half of everything is anomalous raises alarms everywhere: lower F1
    worse = train(defs, instance, contamination=0.45)
    meta = metadata_of(worse, "energy_iforest")
    assert meta["model_version"] == "2" and meta["promoted"] is False and meta["alias"] == "challenger"
    [gate] = worse.get_asset_check_evaluations()
    assert gate.check_name == "champion_gate" and gate.passed is False
    assert gate.severity == dg.AssetCheckSeverity.WARN
    assert "worse than the champion" in str(gate.metadata["reason"].value)
    assert gate.metadata["candidate_score"].value < gate.metadata["champion_score"].value  # type: ignore[operator]
    champion = champion_info(settings.resolved_mlflow_uri, em.MODEL_NAME)
    assert champion is not None and champion.version == "1"
    challenger = champion_info(settings.resolved_mlflow_uri, em.MODEL_NAME, "challenger")
    assert challenger is not None and challenger.version == "2"

    store = ServingStore(settings.resolved_db_url)
    try:
        decisions = store.promotion_history(model_name=em.MODEL_NAME)
    finally:
        store.dispose()
    assert [(d.candidate_version, d.alias, d.promoted) for d in decisions] == [
        ("2", "challenger", False),
        ("1", "champion", True),
    ]
    assert decisions[0].previous_champion == "1" and decisions[0].dagster_run_id == worse.run_id
    assert decisions[0].champion_metrics is not None and "f1" in decisions[0].champion_metrics


def test_training_run_is_recorded_in_mlflow(factory_settings: FactorySettings, instance: dg.DagsterInstance) -> None:
    import mlflow.models
    from mlflow.tracking import MlflowClient

    result = train(build_definitions(factory_settings), instance)
    meta = metadata_of(result, "energy_iforest")
    client = MlflowClient(factory_settings.resolved_mlflow_uri)
    run = client.get_run(str(meta["mlflow_run_id"]))
    assert run.data.params["training_source"] == em.TRAINING_SOURCE_BASELINE
    assert run.data.params["n_estimators"] == "50"
    assert run.data.tags["dagster_run_id"] == result.run_id
    assert {"threshold", "anomaly_share", "score_p99", "training_rows", "f1", "recall"} <= set(run.data.metrics)
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs if i.tags[0].key == "mlflow.data.context"}
    assert set(inputs) == {"training", "validation"}
    digests = meta["datasets"]
    assert {d.digest for d in inputs.values()} == {d["digest"] for d in digests.values()}  # type: ignore[union-attr]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location.startswith(factory_settings.mlflow_artifacts_dir.as_uri())
    version = client.get_model_version(em.MODEL_NAME, "1")
    assert version.run_id == run.info.run_id and version.tags["dagster_run_id"] == result.run_id
    use_tracking_uri(factory_settings.resolved_mlflow_uri)
    logged = mlflow.models.get_model_info(f"models:/{em.MODEL_NAME}/1")
    assert logged.signature is not None and logged.saved_input_example_info is not None


def test_ensure_energy_champion_trains_once_into_the_factory_instance(factory_settings: FactorySettings) -> None:
    settings = factory_settings
    config = yaml.safe_load(write_dagster_yaml(settings).read_text())
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["telemetry"] == {"enabled": False}

    assert ensure_energy_champion(settings) == "1"
    assert ensure_energy_champion(settings) == "1"  # a champion exists: nothing trained

    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        runs = instance.get_runs()
        assert [r.job_name for r in runs] == ["energy_iforest_training_job"]
        assert Path(instance.root_directory) == settings.dagster_home
