"""`sealed_windows_sensor`: turns sealed window files into window partitions and one run for them.

The collector (its own process, `sensors/collector.py`) holds the MQTT subscription and seals
window files; a tick only lists files, so it stays short. The cursor is the last window key
handed over. Each tick lists sealed keys from a little before the cursor's window (a collector
that seals late, or a second collector whose clock lags, is not skipped), drops keys that are
already partitions, adds the rest as partitions and requests ONE run covering all of them.

A run for several windows is a partition-key range (the `dagster/asset_partition_range_*` tags)
over assets with `BackfillPolicy.single_run()`, which then see every key in
`context.partition_keys`. Ranges of a dynamic partitions definition follow the order in which
keys were added; the keys of one tick are added together, in order, in the same tick, so the
range from the first to the last of them is exactly that batch.
"""

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import dagster as dg

from assets.telemetry import window_partitions
from factory_pipelines.jobs import window_predictions_job
from factory_pipelines.resources import PartitionFilesResource
from factory_pipelines.windows import WindowKeyError, iter_sealed_keys, window_start

ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
LOOKBACK_WINDOWS = 5
MIN_LOOKBACK_SECONDS = 30.0
MAX_WINDOWS_PER_RUN = 1000
_LOOKUP_ONE_BY_ONE = 64  # fewer candidates than this: ask the instance per key, else fetch all keys once


def lookback_since(
    cursor: str | None, *, window_seconds: float, now: datetime, retention_days: float | None
) -> datetime | None:
    """Earliest window start a tick looks at: a few windows before the cursor, never past retention."""
    floor = now - timedelta(days=retention_days) if retention_days else None
    if cursor is None:
        return floor
    lookback = timedelta(seconds=max(LOOKBACK_WINDOWS * window_seconds, MIN_LOOKBACK_SECONDS))
    since = window_start(cursor) - lookback
    return max(since, floor) if floor else since


def windows_run_request(keys: Sequence[str]) -> dg.RunRequest:
    """One run for `keys` (in the order they were added as partitions); run_key derived from them."""
    digest = hashlib.sha1("\n".join(keys).encode()).hexdigest()[:12]
    run_key = f"windows:{keys[0]}..{keys[-1]}:{len(keys)}:{digest}"
    tags = {"factory/windows": str(len(keys))}
    if len(keys) == 1:
        return dg.RunRequest(run_key=run_key, partition_key=keys[0], tags=tags)
    return dg.RunRequest(
        run_key=run_key,
        tags={**tags, ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
    )


def _registered(instance: dg.DagsterInstance, candidates: Sequence[str]) -> set[str]:
    name = window_partitions.name
    if len(candidates) < _LOOKUP_ONE_BY_ONE:
        return {key for key in candidates if instance.has_dynamic_partition(name, key)}
    return set(instance.get_dynamic_partitions(name))


def build_sealed_windows_sensor(
    *,
    minimum_interval_seconds: int,
    retention_days: float | None = None,
    max_windows_per_run: int = MAX_WINDOWS_PER_RUN,
) -> dg.SensorDefinition:
    """The sensor, with its polling interval and how far back a first tick looks from settings."""

    @dg.sensor(
        name="sealed_windows_sensor",
        job=window_predictions_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds each sealed window as a partition and runs the window assets for all new ones at once.",
    )
    def sealed_windows_sensor(
        context: dg.SensorEvaluationContext, window_files: PartitionFilesResource
    ) -> dg.SensorResult | dg.SkipReason:
        cursor = context.cursor or None
        now = datetime.now(UTC)
        try:
            since = lookback_since(
                cursor, window_seconds=window_files.window_seconds, now=now, retention_days=retention_days
            )
        except WindowKeyError:
            context.log.warning(f"cursor {cursor!r} is no window key; starting over from the retention horizon")
            cursor = None
            since = lookback_since(
                None, window_seconds=window_files.window_seconds, now=now, retention_days=retention_days
            )
        candidates = list(iter_sealed_keys(window_files.windows_dir, since))
        registered = _registered(context.instance, candidates)
        new_keys = [key for key in candidates if key not in registered][:max_windows_per_run]
        if not new_keys:
            return dg.SkipReason(
                f"no new sealed windows since {since:%Y-%m-%dT%H:%M:%SZ}" if since else "no sealed windows"
            )
        context.log.info(f"{len(new_keys)} new window(s): {new_keys[0]} .. {new_keys[-1]}")
        return dg.SensorResult(
            run_requests=[windows_run_request(new_keys)],
            dynamic_partitions_requests=[window_partitions.build_add_request(new_keys)],
            cursor=max(new_keys[-1], cursor or ""),
        )

    return sealed_windows_sensor
