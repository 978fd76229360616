"""The window sensor and the retention sensor, ticked by hand against a real Dagster instance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from dagster._core.test_utils import create_run_for_test

from factory_pipelines.definitions import build_definitions
from factory_pipelines.durable_files import write_parquet_atomic
from factory_pipelines.resources import PartitionFilesResource
from factory_pipelines.settings import FactorySettings, load_settings
from factory_pipelines.windows import WINDOW_SCHEMA, aligned_window_start, sealed_window_path, window_key
from sensors.retention_sensor import build_window_retention_sensor, partitions_to_remove
from sensors.window_sensor import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    build_sealed_windows_sensor,
    sweep_due,
)

PARTITIONS = "telemetry_windows"
WINDOW_S = 2


@pytest.fixture
def settings(tmp_path: Path) -> FactorySettings:
    settings = load_settings(data_dir=tmp_path / "data", window_seconds=WINDOW_S)
    settings.ensure_dirs()
    return settings


def seal(settings: FactorySettings, start: datetime, collector: str = "collector-1") -> str:
    """An (empty) sealed window file at the path the collector uses; the sensor only lists them."""
    key = window_key(start, collector)
    write_parquet_atomic(pl.DataFrame(schema=WINDOW_SCHEMA), sealed_window_path(settings.windows_dir, key))
    return key


def recent_starts(count: int) -> list[datetime]:
    first = aligned_window_start(datetime.now(UTC), WINDOW_S) - timedelta(seconds=60)
    return [first + timedelta(seconds=i * WINDOW_S) for i in range(count)]


class Ticker:
    """Ticks a sensor like the daemon does: hands the cursor over and applies partition requests."""

    def __init__(self, sensor: dg.SensorDefinition, instance: dg.DagsterInstance, settings: FactorySettings) -> None:
        self.sensor, self.instance, self.cursor = sensor, instance, None
        self.resources = {
            "window_files": PartitionFilesResource(data_dir=str(settings.data_path), window_seconds=WINDOW_S)
        }

    def tick(self) -> dg.SensorResult | dg.SkipReason:
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources=self.resources)
        result = self.sensor(context)
        if isinstance(result, dg.SensorResult):
            for request in result.dynamic_partitions_requests or []:
                if isinstance(request, dg.AddDynamicPartitionsRequest):
                    self.instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
                else:
                    for key in request.partition_keys:
                        self.instance.delete_dynamic_partition(request.partitions_def_name, key)
            if result.cursor is not None:
                self.cursor = result.cursor
        return result


def window_sensor(max_windows_per_run: int = 1000, sweep_every_seconds: float | None = None) -> dg.SensorDefinition:
    return build_sealed_windows_sensor(
        minimum_interval_seconds=5,
        retention_days=30,
        max_windows_per_run=max_windows_per_run,
        sweep_every_seconds=sweep_every_seconds,
    )


def test_new_sealed_windows_become_partitions_and_one_run(
    settings: FactorySettings, instance: dg.DagsterInstance
) -> None:
    keys = [seal(settings, start) for start in recent_starts(3)]
    ticker = Ticker(window_sensor(), instance, settings)

    result = ticker.tick()
    assert isinstance(result, dg.SensorResult)
    [add] = result.dynamic_partitions_requests
    assert add.partitions_def_name == PARTITIONS and list(add.partition_keys) == keys
    [run] = result.run_requests
    assert run.tags[ASSET_PARTITION_RANGE_START_TAG] == keys[0]
    assert run.tags[ASSET_PARTITION_RANGE_END_TAG] == keys[-1]
    assert run.partition_key is None and run.run_key and keys[0] in run.run_key
    assert ticker.cursor == keys[-1]
    # the range resolves to exactly the new windows, in the instance's partition order
    assert instance.get_dynamic_partitions(PARTITIONS) == keys

    second = ticker.tick()
    assert isinstance(second, dg.SkipReason) and "no new sealed windows" in (second.skip_message or "")
    assert ticker.cursor == keys[-1]


def test_late_sealed_earlier_window_is_still_picked_up(settings: FactorySettings, instance: dg.DagsterInstance) -> None:
    starts = recent_starts(4)
    keys = [seal(settings, start) for start in starts]
    ticker = Ticker(window_sensor(), instance, settings)
    ticker.tick()

    # a second collector seals a window that starts before the cursor's, after the cursor moved on
    late = seal(settings, starts[1], collector="collector-0")
    assert late < ticker.cursor
    result = ticker.tick()
    assert isinstance(result, dg.SensorResult)
    [run] = result.run_requests
    assert run.partition_key == late  # a single window: an ordinary partition run
    assert ticker.cursor == keys[-1]  # the cursor never moves back
    assert late in instance.get_dynamic_partitions(PARTITIONS)

    # and a new window after that is handed over too: nothing skipped, nothing twice
    newest = seal(settings, starts[-1] + timedelta(seconds=WINDOW_S))
    result = ticker.tick()
    assert isinstance(result, dg.SensorResult) and list(result.dynamic_partitions_requests[0].partition_keys) == [
        newest
    ]
    assert isinstance(ticker.tick(), dg.SkipReason)


def test_a_window_sealed_long_after_its_time_is_found_by_the_sweep(
    settings: FactorySettings, instance: dg.DagsterInstance
) -> None:
    """A collector back after an outage seals the window it had open, far behind the cursor."""
    keys = [seal(settings, start) for start in recent_starts(3)]
    ticker = Ticker(window_sensor(), instance, settings)
    ticker.tick()
    straggler = seal(settings, recent_starts(1)[0] - timedelta(minutes=20), collector="collector-2")
    assert isinstance(ticker.tick(), dg.SkipReason)  # behind the lookback: an ordinary tick misses it

    # A period shorter than a tick: every tick of this sensor is a sweep.
    sweeping = Ticker(window_sensor(sweep_every_seconds=1e-6), instance, settings)
    sweeping.cursor = ticker.cursor
    result = sweeping.tick()
    assert isinstance(result, dg.SensorResult)
    assert list(result.dynamic_partitions_requests[0].partition_keys) == [straggler]
    assert sweeping.cursor == keys[-1]  # the cursor never moves back
    assert isinstance(sweeping.tick(), dg.SkipReason)  # nothing twice


@pytest.mark.parametrize(("seconds_into_period", "due"), [(0.0, True), (9.9, True), (10.1, False), (599.0, False)])
def test_a_sweep_is_due_in_the_first_two_ticks_of_each_period(seconds_into_period: float, due: bool) -> None:
    period_start = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    now = period_start + timedelta(seconds=seconds_into_period)
    assert sweep_due(now, every_seconds=600, tick_seconds=5) is due
    assert sweep_due(now, every_seconds=None, tick_seconds=5) is False


def test_a_backlog_is_handed_over_in_bounded_runs_without_skipping(
    settings: FactorySettings, instance: dg.DagsterInstance
) -> None:
    keys = [seal(settings, start) for start in recent_starts(7)]
    ticker = Ticker(window_sensor(max_windows_per_run=3), instance, settings)
    handed: list[str] = []
    for _ in range(3):
        result = ticker.tick()
        assert isinstance(result, dg.SensorResult) and len(result.run_requests) == 1
        handed += result.dynamic_partitions_requests[0].partition_keys
    assert handed == keys
    assert isinstance(ticker.tick(), dg.SkipReason)


def test_windows_older_than_retention_are_not_added(settings: FactorySettings, instance: dg.DagsterInstance) -> None:
    old = seal(settings, aligned_window_start(datetime.now(UTC) - timedelta(days=31), WINDOW_S))
    fresh = seal(settings, recent_starts(1)[0])
    result = Ticker(window_sensor(), instance, settings).tick()
    assert isinstance(result, dg.SensorResult)
    assert list(result.dynamic_partitions_requests[0].partition_keys) == [fresh]
    assert old not in instance.get_dynamic_partitions(PARTITIONS)


def test_partitions_to_remove_by_age_then_by_count() -> None:
    now = datetime(2026, 11, 25, tzinfo=UTC)
    old = [window_key(now - timedelta(days=40, minutes=i), "c") for i in range(2)]
    recent = [window_key(now - timedelta(minutes=i), "c") for i in range(5, 0, -1)]
    remove = partitions_to_remove([*old, *recent], now=now, retention_days=30, max_live_partitions=3)
    assert set(remove) == {*old, *recent[:2]}
    assert partitions_to_remove(recent, now=now, retention_days=30, max_live_partitions=10) == []


def test_retention_sensor_deletes_old_partitions_and_bounds_the_count(
    settings: FactorySettings, instance: dg.DagsterInstance
) -> None:
    now = datetime.now(UTC)
    old = [window_key(now - timedelta(days=40, minutes=i), "collector-1") for i in range(3)]
    recent = [window_key(now - timedelta(minutes=m), "collector-1") for m in range(5, 0, -1)]
    instance.add_dynamic_partitions(PARTITIONS, [*old, *recent])
    sensor = build_window_retention_sensor(retention_days=30, max_live_partitions=3)
    ticker = Ticker(sensor, instance, settings)

    result = ticker.tick()
    assert isinstance(result, dg.SensorResult) and not result.run_requests
    assert set(result.dynamic_partitions_requests[0].partition_keys) == {*old, *recent[:2]}
    [observation] = result.asset_events
    assert observation.metadata["live_partitions"].value == 3
    assert instance.get_dynamic_partitions(PARTITIONS) == recent[2:]

    again = ticker.tick()
    assert isinstance(again, dg.SensorResult) and again.skip_reason is not None
    assert "3 live window partitions" in (again.skip_reason.skip_message or "")


def test_code_location_wires_sensors_jobs_and_resources(settings: FactorySettings) -> None:
    defs = build_definitions(settings.model_copy(update={"sensor_interval_seconds": 7}))
    window = defs.resolve_sensor_def("sealed_windows_sensor")
    retention = defs.resolve_sensor_def("window_retention_sensor")
    assert window.minimum_interval_seconds == 7
    assert window.default_status == retention.default_status == dg.DefaultSensorStatus.RUNNING
    assert window.job_name == "window_predictions_job"
    job = defs.resolve_job_def("window_predictions_job")
    assert {key.to_user_string() for key in job.asset_layer.selected_asset_keys} == {
        "telemetry_window",
        "machine_features",
        "energy_anomaly_predictions",
        "network_features",
        "cyber_detector_predictions",
        "safety_features",
        "safety_hazard_predictions",
        "robot_steps",
        "rul_predictions",
        "ppe_vision_predictions",
    }
    for model in ("energy_iforest", "cyber_detector", "safety_hazard", "rul_lstm", "ppe_vision"):
        training = defs.resolve_job_def(f"{model}_training_job")
        assert {key.to_user_string() for key in training.asset_layer.selected_asset_keys} == {f"{model}_dataset", model}
    defs.resolve_all_job_defs()  # everything resolves with its resources


def test_while_a_window_run_waits_to_start_new_windows_wait_for_the_next_run(
    settings: FactorySettings, instance: dg.DagsterInstance
) -> None:
    keys = [seal(settings, start) for start in recent_starts(2)]
    not_started = create_run_for_test(
        instance, job_name="window_predictions_job", status=dg.DagsterRunStatus.NOT_STARTED
    )
    ticker = Ticker(window_sensor(), instance, settings)

    skipped = ticker.tick()
    assert isinstance(skipped, dg.SkipReason) and not_started.run_id in (skipped.skip_message or "")
    assert instance.get_dynamic_partitions(PARTITIONS) == [] and ticker.cursor is None

    # once it has started, one run takes every window sealed meanwhile
    instance.delete_run(not_started.run_id)
    third = seal(settings, recent_starts(3)[-1])
    result = ticker.tick()
    assert isinstance(result, dg.SensorResult)
    [run] = result.run_requests
    assert (run.tags[ASSET_PARTITION_RANGE_START_TAG], run.tags[ASSET_PARTITION_RANGE_END_TAG]) == (keys[0], third)
