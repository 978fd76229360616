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

While a window run is queued and not yet started, a tick hands nothing over: the next run then
takes every window sealed meanwhile (up to `max_windows_per_run`), so a machine that falls behind
catches up with a few large runs instead of queueing one run per window.

A window can also be sealed or published long after its time: a collector of a shared
subscription restarted after an outage seals the window it had open, or its publisher uploads
windows held while the object store was down. Such a key falls behind the lookback, so once every
`sweep_every_seconds` (10 minutes) a tick looks back to the retention horizon instead, and hands
over whatever is not yet a partition.

A run that fails leaves its windows registered, so the cursor has moved past them; they are not
lost: each tick also looks at failed runs of the window job and asks again for the same windows
(same partition tags, `factory/retry_of` and `factory/attempt` tags) once an exponential backoff
has passed, up to `max_attempts` runs in all. A newer run for the same windows (the retry, or a
backfill launched from the UI) supersedes the failed one. Until one succeeds, Dagster shows the
partitions as failed; after the last attempt they stay failed for an operator to backfill.
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
PARTITION_TAG = "dagster/partition"
RETRY_OF_TAG = "factory/retry_of"
ATTEMPT_TAG = "factory/attempt"
WINDOW_COUNT_TAG = "factory/windows"
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RETRY_AFTER_SECONDS = 60.0
FAILED_RUNS_PER_TICK = 50  # failed runs looked at per tick, newest first
WAITING_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING]
LOOKBACK_WINDOWS = 5
MIN_LOOKBACK_SECONDS = 30.0
MAX_WINDOWS_PER_RUN = 1000
SWEEP_EVERY_SECONDS = 600.0
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


def sweep_due(now: datetime, *, every_seconds: float | None, tick_seconds: float) -> bool:
    """Whether this tick looks back to the retention horizon: in the first two tick intervals of each period.

    Stateless (no cursor format to migrate); a period may see two sweeps, which is harmless, since
    keys that are already partitions are dropped.
    """
    if every_seconds is None:
        return False
    return now.timestamp() % every_seconds < 2 * tick_seconds


def windows_run_request(keys: Sequence[str]) -> dg.RunRequest:
    """One run for `keys` (in the order they were added as partitions); run_key derived from them."""
    digest = hashlib.sha1("\n".join(keys).encode()).hexdigest()[:12]
    run_key = f"windows:{keys[0]}..{keys[-1]}:{len(keys)}:{digest}"
    tags = {WINDOW_COUNT_TAG: str(len(keys))}
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


def _partition_tags(run: dg.DagsterRun) -> dict[str, str]:
    """The tags that say which windows a run covers (one partition, or a range of them)."""
    return {
        name: run.tags[name]
        for name in (PARTITION_TAG, ASSET_PARTITION_RANGE_START_TAG, ASSET_PARTITION_RANGE_END_TAG)
        if name in run.tags
    }


def failed_window_retries(
    instance: dg.DagsterInstance,
    *,
    now: datetime,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    retry_after_seconds: float = DEFAULT_RETRY_AFTER_SECONDS,
    since: datetime | None = None,
) -> list[dg.RunRequest]:
    """Run requests for the windows of failed window runs that no newer run has taken up yet.

    Attempt n + 1 waits `retry_after_seconds * 2 ** (n - 1)` after attempt n ended; the run key is
    derived from the failed run, so the daemon launches each retry once however often it is asked.
    """
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=window_predictions_job.name,
            statuses=[dg.DagsterRunStatus.FAILURE],
            updated_after=since,
        ),
        limit=FAILED_RUNS_PER_TICK,
    )
    requests: list[dg.RunRequest] = []
    for record in records:
        run = record.dagster_run
        attempt = int(run.tags.get(ATTEMPT_TAG, "1"))
        windows = _partition_tags(run)
        if attempt >= max_attempts or not windows:
            continue
        ended = record.end_time or record.update_timestamp.timestamp()
        if now.timestamp() - ended < retry_after_seconds * 2 ** (attempt - 1):
            continue
        newer = instance.get_run_records(
            filters=dg.RunsFilter(
                job_name=window_predictions_job.name, tags=windows, created_after=record.create_timestamp
            ),
            limit=1,
        )
        if newer:
            continue
        requests.append(
            dg.RunRequest(
                run_key=f"retry:{run.run_id}",
                partition_key=windows.get(PARTITION_TAG),
                tags={
                    **{name: value for name, value in windows.items() if name != PARTITION_TAG},
                    **({WINDOW_COUNT_TAG: run.tags[WINDOW_COUNT_TAG]} if WINDOW_COUNT_TAG in run.tags else {}),
                    RETRY_OF_TAG: run.run_id,
                    ATTEMPT_TAG: str(attempt + 1),
                },
            )
        )
    return requests


def waiting_window_runs(instance: dg.DagsterInstance) -> list[str]:
    """Ids of window runs queued or launched but not yet running."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=window_predictions_job.name, statuses=WAITING_STATUSES), limit=1
    )
    return [record.dagster_run.run_id for record in records]


def build_sealed_windows_sensor(
    *,
    minimum_interval_seconds: int,
    retention_days: float | None = None,
    max_windows_per_run: int = MAX_WINDOWS_PER_RUN,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    retry_after_seconds: float = DEFAULT_RETRY_AFTER_SECONDS,
    sweep_every_seconds: float | None = SWEEP_EVERY_SECONDS,
) -> dg.SensorDefinition:
    """The sensor, with its polling interval, how far back a first tick looks, its retry policy and
    how often it sweeps back to the retention horizon (None: never)."""

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
        waiting = waiting_window_runs(context.instance)
        if waiting:
            # Its successor takes every window sealed meanwhile: one launch for many windows, so a
            # machine that falls behind catches up instead of queueing a run per window.
            return dg.SkipReason(f"window run {waiting[0]} is waiting to start; new windows go in the next run")
        sweep = cursor is not None and sweep_due(
            now, every_seconds=sweep_every_seconds, tick_seconds=minimum_interval_seconds
        )
        try:
            since = lookback_since(
                None if sweep else cursor,
                window_seconds=window_files.window_seconds,
                now=now,
                retention_days=retention_days,
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
        retries = failed_window_retries(
            context.instance,
            now=now,
            max_attempts=max_attempts,
            retry_after_seconds=retry_after_seconds,
            since=now - timedelta(days=retention_days) if retention_days else None,
        )
        for retry in retries:
            context.log.warning(
                f"retrying the windows of failed run {retry.tags[RETRY_OF_TAG]} (attempt {retry.tags[ATTEMPT_TAG]})"
            )
        if not new_keys:
            if retries:
                return dg.SensorResult(run_requests=retries, cursor=cursor)
            return dg.SkipReason(
                f"no new sealed windows since {since:%Y-%m-%dT%H:%M:%SZ}" if since else "no sealed windows"
            )
        context.log.info(f"{len(new_keys)} new window(s): {new_keys[0]} .. {new_keys[-1]}")
        if sweep and cursor is not None and new_keys[0] < cursor:
            stragglers = sum(key < cursor for key in new_keys)
            context.log.warning(f"the sweep found {stragglers} window(s) sealed or published long after their time")
        return dg.SensorResult(
            run_requests=[windows_run_request(new_keys), *retries],
            dynamic_partitions_requests=[window_partitions.build_add_request(new_keys)],
            cursor=max(new_keys[-1], cursor or ""),
        )

    return sealed_windows_sensor
