"""`prediction_alerts_sensor`: new prediction partitions become runs of the orchestrator job.

It reads materializations of every prediction asset (and `telemetry_window`, for the telemetry
rules) from the instance's event log, after a cursor that holds the last storage id seen per
asset, so nothing is skipped when one asset is busier than another and nothing is evaluated twice.
Output of a run that is still going is left for a later tick, so a window's run is evaluated once,
whole: one run of `orchestrator_job` per window, told which sources materialized. The run key names
the window and the newest event, so a tick evaluated twice asks for no second run.
"""

from __future__ import annotations

import json
from collections import defaultdict

import dagster as dg

from assets.alerts import WATCHED_SOURCES, window_alerts
from factory_pipelines.jobs import orchestrator_job

EVENTS_PER_ASSET_PER_TICK = 500  # a backlog is worked off over several ticks, oldest first


def read_cursor(cursor: str | None) -> dict[str, int]:
    """{asset name: last storage id handed over}; an unreadable cursor starts over (runs are keyed)."""
    if not cursor:
        return {}
    try:
        data = json.loads(cursor)
        return {str(k): int(v) for k, v in data.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def new_outputs_by_window(
    instance: dg.DagsterInstance, cursor: dict[str, int], limit: int = EVENTS_PER_ASSET_PER_TICK
) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """{window key: {source asset: newest storage id}} materialized after the cursor, and the new cursor."""
    by_window: dict[str, dict[str, int]] = defaultdict(dict)
    advanced = dict(cursor)
    finished: dict[str, bool] = {}

    def run_finished(run_id: str) -> bool:
        if run_id not in finished:
            run = instance.get_run_by_id(run_id)
            finished[run_id] = run is None or run.is_finished
        return finished[run_id]

    for asset in WATCHED_SOURCES:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_storage_id=cursor.get(asset)),
            limit=limit,
            ascending=True,
        )
        for record in result.records:
            if not run_finished(record.run_id):
                break  # this and later output wait for the run to end (the cursor stops before it)
            advanced[asset] = max(advanced.get(asset, 0), record.storage_id)
            if record.partition_key:
                seen = by_window[record.partition_key]
                seen[asset] = max(seen.get(asset, 0), record.storage_id)
    return dict(by_window), advanced


def build_prediction_alerts_sensor(*, minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="prediction_alerts_sensor",
        job=orchestrator_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Runs the orchestrator job (alert rules, planner, texts) on each window with new predictions.",
    )
    def prediction_alerts_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        cursor = read_cursor(context.cursor)
        by_window, advanced = new_outputs_by_window(context.instance, cursor)
        if not by_window:
            return dg.SkipReason("no new prediction partitions")
        requests = [
            dg.RunRequest(
                run_key=f"alerts:{key}:{max(sources.values())}",
                partition_key=key,
                run_config=dg.RunConfig(ops={window_alerts.op.name: {"config": {"sources": sorted(sources)}}}),
                tags={"factory/alert-sources": ",".join(sorted(sources))},
            )
            for key, sources in sorted(by_window.items())
        ]
        context.log.info(f"{len(requests)} window(s) with new predictions: {', '.join(sorted(by_window))}")
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(advanced, sort_keys=True))

    return prediction_alerts_sensor
