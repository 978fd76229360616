"""The Dagster code location: assets, the asset check, jobs, sensors and resources.

Loaded lazily (`@dg.definitions`), so importing this module reads no settings; the loader calls
`defs()`, which builds everything from `load_settings()` (the `FACTORY_*` variables decide).
`build_definitions(settings)` is the same assembly for callers holding their own settings
(`factory up`, tests).
"""

from __future__ import annotations

import dagster as dg

from assets import all_assets, window_partitions
from assets.backlog import build_shift_backlog
from factory_pipelines.alert_rules import load_rules
from factory_pipelines.executors import run_executor
from factory_pipelines.jobs import (
    alert_timers_job,
    build_backlog_job,
    orchestrator_job,
    training_jobs,
    window_predictions_job,
)
from factory_pipelines.resources import build_resources
from factory_pipelines.schedules import alert_timers_schedule, build_shift_backlog_schedule
from factory_pipelines.settings import FactorySettings, load_settings
from sensors.alert_sensor import build_prediction_alerts_sensor
from sensors.retention_sensor import build_window_retention_sensor
from sensors.window_sensor import build_sealed_windows_sensor

RETENTION_INTERVAL_SECONDS = 300

__all__ = ["build_definitions", "defs", "window_partitions"]


def build_definitions(settings: FactorySettings) -> dg.Definitions:
    load_rules(settings.alert_rules_file)  # a bad rules file stops the code location with file:line, not a run later
    shift_backlog = build_shift_backlog(settings.shift_calendar, settings.site)
    backlog_job = build_backlog_job(shift_backlog)
    return dg.Definitions(
        assets=[*all_assets, shift_backlog],
        jobs=[window_predictions_job, *training_jobs, orchestrator_job, alert_timers_job, backlog_job],
        schedules=[alert_timers_schedule, build_shift_backlog_schedule(settings.shift_calendar, backlog_job)],
        sensors=[
            build_prediction_alerts_sensor(minimum_interval_seconds=settings.sensor_interval_seconds),
            build_sealed_windows_sensor(
                minimum_interval_seconds=settings.sensor_interval_seconds,
                retention_days=settings.retention_days,
            ),
            build_window_retention_sensor(
                retention_days=settings.retention_days,
                max_live_partitions=settings.max_live_partitions,
                minimum_interval_seconds=max(RETENTION_INTERVAL_SECONDS, settings.sensor_interval_seconds),
            ),
        ],
        resources=build_resources(settings),
        executor=run_executor(settings),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_settings())
