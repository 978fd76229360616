"""`window_retention_sensor`: keeps the number of live window partitions bounded.

Dagster stays fast below about 100,000 partitions per asset. This sensor removes window
partitions older than the retention age from Dagster, then the oldest beyond the configured
maximum; their Parquet files and their predictions in the serving store stay. Each tick reports
the live partition count in its log and skip message, and as an observation of
`telemetry_window` whenever it removed partitions.
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import dagster as dg

from assets.telemetry import telemetry_window, window_partitions
from factory_pipelines.windows import WindowKeyError, window_start


def partitions_to_remove(
    keys: Sequence[str], *, now: datetime, retention_days: float, max_live_partitions: int
) -> list[str]:
    """Keys older than the retention age, then the oldest keys beyond `max_live_partitions`."""
    cutoff = now - timedelta(days=retention_days)

    def expired(key: str) -> bool:
        try:
            return window_start(key) < cutoff
        except WindowKeyError:  # not ours to judge by age; still counts towards the maximum
            return False

    remove = [key for key in keys if expired(key)]
    kept = sorted(set(keys) - set(remove))
    excess = len(kept) - max_live_partitions
    if excess > 0:
        remove += kept[:excess]
    return remove


def build_window_retention_sensor(
    *, retention_days: float, max_live_partitions: int, minimum_interval_seconds: int = 300
) -> dg.SensorDefinition:
    @dg.sensor(
        name="window_retention_sensor",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Removes window partitions older than {retention_days:g} days and keeps at most "
            f"{max_live_partitions} live (files and predictions stay)."
        ),
    )
    def window_retention_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        keys = context.instance.get_dynamic_partitions(window_partitions.name)
        remove = partitions_to_remove(
            keys, now=datetime.now(UTC), retention_days=retention_days, max_live_partitions=max_live_partitions
        )
        live = len(keys) - len(remove)
        message = f"{live} live window partitions (max {max_live_partitions}); removed {len(remove)}"
        context.log.info(message)
        if not remove:
            return dg.SensorResult(skip_reason=message)
        observation = dg.AssetObservation(
            asset_key=telemetry_window.key,
            metadata={
                "live_partitions": live,
                "removed_partitions": len(remove),
                "max_live_partitions": max_live_partitions,
            },
        )
        return dg.SensorResult(
            dynamic_partitions_requests=[window_partitions.build_delete_request(remove)], asset_events=[observation]
        )

    return window_retention_sensor
