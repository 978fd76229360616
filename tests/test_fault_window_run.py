"""A prediction run that fails: its windows are retried, show as failed until filled, and are never skipped.

A real Dagster instance, a real MLflow store with an energy champion, sealed windows on disk. The
fault is at the process boundary: the run's MLflow registry is an address where nothing listens
(a registry that went down), so loading the champion fails and the run fails. The sensor is ticked
the way the daemon ticks it, and each run request it makes is executed with its tags, as the daemon
launches it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

from assets.telemetry import window_partitions
from factory_pipelines import energy_model as em
from factory_pipelines.dagster_instance import ensure_energy_champion
from factory_pipelines.definitions import build_definitions
from factory_pipelines.resources import PartitionFilesResource
from factory_pipelines.settings import FactorySettings
from factory_pipelines.store import ServingStore
from sensors.window_sensor import ATTEMPT_TAG, RETRY_OF_TAG, build_sealed_windows_sensor
from tests.machine_windows import MACHINES, write_sealed_window

PREDICTIONS = dg.AssetKey("energy_anomaly_predictions")


@pytest.fixture
def registry_down(
    factory_settings: FactorySettings, free_port: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> FactorySettings:
    """The same settings with the MLflow registry at an address where nothing listens; an energy champion
    exists in the real one."""
    ensure_energy_champion(factory_settings)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast on the dead registry
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    return factory_settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})


class Daemon:
    """Ticks the window sensor with its cursor and launches what it asks for, like the daemon does."""

    def __init__(self, instance: dg.DagsterInstance, settings: FactorySettings, retry_after_seconds: float) -> None:
        self.instance, self.settings, self.cursor = instance, settings, None
        self.sensor = build_sealed_windows_sensor(
            minimum_interval_seconds=5, max_attempts=3, retry_after_seconds=retry_after_seconds
        )
        self.resources = {
            "window_files": PartitionFilesResource(
                data_dir=str(settings.data_path), window_seconds=settings.window_seconds
            )
        }

    def tick(self) -> list[dg.RunRequest]:
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources=self.resources)
        result = self.sensor(context)
        if isinstance(result, dg.SkipReason):
            return []
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        if result.cursor is not None:
            self.cursor = result.cursor
        return list(result.run_requests or [])

    def launch(self, request: dg.RunRequest, settings: FactorySettings) -> dg.ExecuteInProcessResult:
        job = build_definitions(settings).resolve_job_def("window_predictions_job")
        return job.execute_in_process(
            instance=self.instance,
            partition_key=request.partition_key,
            tags={**request.tags, "dagster/run_key": request.run_key or ""},
            raise_on_error=False,
        )


def failed_and_materialized(instance: dg.DagsterInstance) -> tuple[set[str], set[str]]:
    """What the Dagster UI shows for the prediction asset's partitions (its asset status cache)."""
    status = get_and_update_asset_status_cache_value(instance, PREDICTIONS, window_partitions)
    assert status is not None
    return (
        set(status.deserialize_failed_partition_subsets(window_partitions).get_partition_keys()),
        set(status.deserialize_materialized_partition_subsets(window_partitions).get_partition_keys()),
    )


def stored_windows(settings: FactorySettings) -> set[str]:
    store = ServingStore(settings.resolved_db_url)
    try:
        return {p.window_key for p in store.prediction_history(model_name=em.MODEL_NAME, limit=1000).items}
    finally:
        store.dispose()


@pytest.mark.timeout(180)
def test_a_failed_window_run_is_retried_with_backoff_and_never_skipped(
    factory_settings: FactorySettings, instance: dg.DagsterInstance, registry_down: FactorySettings
) -> None:
    settings = factory_settings

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    first = write_sealed_window(settings, start, seed=1)
    daemon = Daemon(instance, settings, retry_after_seconds=3600)

    # 1) the sensor hands the window over; the run fails while the registry is down
    [request] = daemon.tick()
    assert request.partition_key == first and daemon.cursor == first
    failed = daemon.launch(request, registry_down)
    assert not failed.success
    failed_keys, materialized = failed_and_materialized(instance)
    assert first in failed_keys and first not in materialized
    assert first not in stored_windows(settings)

    # 2) the cursor has moved past the window, but it is not forgotten: during the backoff nothing
    #    is asked again; a new window is handed over as usual, and the failed one waits its turn
    second = write_sealed_window(settings, start + timedelta(seconds=settings.window_seconds), seed=2)
    [new_window] = daemon.tick()
    assert new_window.partition_key == second and RETRY_OF_TAG not in new_window.tags
    assert daemon.cursor == second
    assert daemon.launch(new_window, settings).success
    assert daemon.tick() == []  # backoff not over: no retry yet, and no new windows

    # 3) once the backoff has passed, the sensor asks for the failed window again; while the
    #    registry is still down that retry fails too, and the partition still shows as failed
    daemon.sensor = build_sealed_windows_sensor(minimum_interval_seconds=5, max_attempts=3, retry_after_seconds=0)
    [retry] = daemon.tick()
    assert retry.partition_key == first
    assert retry.tags[RETRY_OF_TAG] == failed.run_id and retry.tags[ATTEMPT_TAG] == "2"
    assert retry.run_key == f"retry:{failed.run_id}"
    failed_again = daemon.launch(retry, registry_down)
    assert not failed_again.success
    assert first in failed_and_materialized(instance)[0]

    # asked again on the next tick only for the newest failure (the first is superseded by its retry)
    [third_attempt] = daemon.tick()
    assert third_attempt.tags[RETRY_OF_TAG] == failed_again.run_id and third_attempt.tags[ATTEMPT_TAG] == "3"

    # 4) the registry is back: the third attempt fills the window, which no longer shows as failed
    filled = daemon.launch(third_attempt, settings)
    assert filled.success
    failed_keys, materialized = failed_and_materialized(instance)
    assert first not in failed_keys and {first, second} <= materialized
    assert {first, second} <= stored_windows(settings)
    store = ServingStore(settings.resolved_db_url)
    try:
        rows = [
            p for p in store.prediction_history(model_name=em.MODEL_NAME, limit=1000).items if p.window_key == first
        ]
    finally:
        store.dispose()
    assert len(rows) == MACHINES and {p.dagster_run_id for p in rows} == {filled.run_id}
    assert daemon.tick() == []  # nothing left to retry


@pytest.mark.timeout(180)
# SQLite only: the retry path on PostgreSQL is the test above; this one adds the backfill (16 s more in CI).
@pytest.mark.parametrize("instance", ["sqlite"], indirect=True)
def test_after_the_last_attempt_the_window_stays_failed_until_a_backfill_fills_it(
    factory_settings: FactorySettings, instance: dg.DagsterInstance, registry_down: FactorySettings
) -> None:
    settings = factory_settings
    key = write_sealed_window(settings, datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2), seed=3)
    daemon = Daemon(instance, settings, retry_after_seconds=0)
    daemon.sensor = build_sealed_windows_sensor(minimum_interval_seconds=5, max_attempts=2, retry_after_seconds=0)

    [request] = daemon.tick()
    assert not daemon.launch(request, registry_down).success
    [retry] = daemon.tick()
    assert retry.tags[ATTEMPT_TAG] == "2"
    assert not daemon.launch(retry, registry_down).success
    assert daemon.tick() == []  # two attempts were allowed: the sensor gives up ...
    assert key in failed_and_materialized(instance)[0]  # ... and the UI shows the partition as failed

    # an operator's backfill of the failed partition (a plain partition run, as the UI launches it) fills it
    backfill = build_definitions(settings).resolve_job_def("window_predictions_job")
    assert backfill.execute_in_process(instance=instance, partition_key=key).success
    failed_keys, materialized = failed_and_materialized(instance)
    assert key not in failed_keys and key in materialized
    assert key in stored_windows(settings)
    assert daemon.tick() == []
