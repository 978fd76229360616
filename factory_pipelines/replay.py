"""CSV replay (`factory replay FILE.csv --speed X`): a plant export published as live telemetry.

The file has the manufacturing_6G_dataset.csv layout (`telemetry.MACHINE_EXPORT_COLUMNS`; extra
columns are passed through as extra payload fields). It is read lazily in batches with polars,
so a big export never sits in memory whole. Each row becomes a MachineTelemetry on our topic
`factory/{site}/machine-{Machine_ID:02d}/telemetry` (not the legacy `factory/machine/...` layout,
which is for the plant's own devices), QoS 1, with a bounded number awaiting the broker's ack.

`ts` is the row's original Timestamp (naive times are taken as UTC), not the replay time: the
collector assigns windows by time of receipt anyway, and the models then see the measurement
time the plant recorded. `seq` counts up per asset from the wall-clock epoch in microseconds at
start, so a second replay of the same file is new data, never mistaken for a duplicate.

Timing: rows with equal Timestamps go out together; the gap to the next group is the original
gap divided by `speed` (None or 0: as fast as possible; a timestamp going backwards: no wait).
A bad row (unparseable number, Timestamp or Machine_ID) is logged, counted and skipped; it never
stops the replay. An empty cell is a field the device did not measure, and is left out. Cells are
read unquoted (no field of the layout holds a comma) and stripped of blanks and quotes, so a
stray quote spoils at most its own row, never the rest of the file.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from factory_pipelines.mqtt import BoundedPublisher, connect_and_wait, make_client
from factory_pipelines.settings import FactorySettings
from factory_pipelines.telemetry import (
    MACHINE_EXPORT_COLUMNS,
    MACHINE_FIELD_BY_COLUMN,
    MACHINE_NUMERIC_FIELDS,
    MachineTelemetry,
    dump_payload,
    first_seq,
    telemetry_topic,
)

log = logging.getLogger(__name__)

BATCH_ROWS = 10_000
MAX_PENDING_PUBLISHES = 1000
MAX_BAD_ROW_EXAMPLES = 20
TIMESTAMP_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%d/%m/%Y %H:%M")
_NUMERIC_COLUMNS = tuple(column for column, name in MACHINE_FIELD_BY_COLUMN.items() if name in MACHINE_NUMERIC_FIELDS)
_LINE = "__line"
_TS = "__ts"
_MACHINE = "__machine"


class ReplayFileError(ValueError):
    """The file cannot be replayed at all (missing, empty, or not the plant-export layout)."""


@dataclass
class ReplayStats:
    """What a replay did; `bad_row_examples` holds (line number, reason) of the first bad rows."""

    rows_read: int = 0
    rows_published: int = 0
    bad_rows: int = 0
    bad_row_examples: list[tuple[int, str]] = field(default_factory=list)
    first_ts: datetime | None = None
    last_ts: datetime | None = None
    elapsed_s: float = 0.0
    unacknowledged: int = 0
    stopped_early: bool = False


def check_header(path: Path) -> list[str]:
    """The file's columns; ReplayFileError listing what is missing from the plant-export layout."""
    path = Path(path)
    if not path.is_file():
        raise ReplayFileError(f"{path} does not exist or is not a file")
    try:
        columns = pl.read_csv(path, n_rows=0, infer_schema=False).columns
    except (pl.exceptions.NoDataError, pl.exceptions.ComputeError) as exc:
        raise ReplayFileError(f"{path} is not a readable CSV file: {exc}") from exc
    missing = [column for column in MACHINE_EXPORT_COLUMNS if column not in columns]
    if missing:
        raise ReplayFileError(
            f"{path} lacks the plant-export column(s) {', '.join(missing)}; "
            f"expected {', '.join(MACHINE_EXPORT_COLUMNS)}; found {', '.join(columns) or 'no columns'}"
        )
    return columns


def _parse_batch(batch: pl.DataFrame) -> pl.DataFrame:
    """Typed columns plus `__bad`: the reason a row cannot be published, or null."""
    stripped = {column: pl.col(column).str.strip_chars(' \t"') for column in batch.columns if column != _LINE}
    timestamp = pl.coalesce(
        [stripped["Timestamp"].str.to_datetime(fmt, strict=False, time_unit="us") for fmt in TIMESTAMP_FORMATS]
    )
    typed = batch.with_columns(
        timestamp.dt.replace_time_zone("UTC").alias(_TS),
        stripped["Machine_ID"].cast(pl.Float64, strict=False).alias(_MACHINE),
        *(stripped[column].cast(pl.Float64, strict=False).alias(f"__num_{column}") for column in _NUMERIC_COLUMNS),
    )
    reasons = [
        pl.when(pl.col(_TS).is_null()).then(pl.format("unparseable Timestamp {}", pl.col("Timestamp"))),
        pl.when(
            pl.col(_MACHINE).is_null() | (pl.col(_MACHINE) != pl.col(_MACHINE).round(0)) | (pl.col(_MACHINE) < 0)
        ).then(pl.format("Machine_ID {} is not a non-negative integer", pl.col("Machine_ID"))),
        *(
            pl.when(
                pl.col(f"__num_{column}").is_null() & stripped[column].is_not_null() & (stripped[column] != "")
            ).then(pl.format(f"{column} {{}} is not a number", pl.col(column)))
            for column in _NUMERIC_COLUMNS
        ),
    ]
    return typed.with_columns(pl.coalesce(reasons).alias("__bad"))


def _row_payload(row: dict[str, Any], asset_id: str, seq: int, extra_columns: list[str]) -> MachineTelemetry:
    values: dict[str, Any] = {
        "asset_id": asset_id,
        "ts": row[_TS].replace(tzinfo=UTC),
        "seq": seq,
        "machine_id": str(int(row[_MACHINE])),
    }
    for column, name in MACHINE_FIELD_BY_COLUMN.items():
        if column == "Machine_ID":
            continue
        value = row[f"__num_{column}"] if column in _NUMERIC_COLUMNS else row[column]
        if isinstance(value, str):
            value = value.strip(' \t"')
        if value is not None and value != "":
            values[name] = value
    for column in extra_columns:
        if row[column] not in (None, ""):
            values[column] = row[column]
    return MachineTelemetry(**values)


def _readable_batches(lazy: pl.LazyFrame, path: Path, stats: ReplayStats) -> Iterator[pl.DataFrame]:
    """The file's batches up to the first one polars cannot split into rows (e.g. a broken quote).

    What follows such a spot cannot be cut into rows reliably, so the replay ends there; the
    spot counts as one bad row and the rows before it are published as usual.
    """
    batches = lazy.collect_batches(chunk_size=BATCH_ROWS)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except pl.exceptions.PolarsError as exc:
            line = stats.rows_read + 2
            reason = f"unreadable CSV from about here on: {str(exc).splitlines()[0]}"
            stats.bad_rows += 1
            stats.bad_row_examples.append((line, reason))
            log.error("%s line %d: %s; the replay ends here", path, line, reason)
            return
        yield batch


def replay_csv(
    settings: FactorySettings,
    path: Path,
    *,
    speed: float | None = 1.0,
    stop: threading.Event | None = None,
    progress: Callable[[ReplayStats], None] | None = None,
) -> ReplayStats:
    """Publish every row of a plant export, paced by its Timestamps divided by `speed`. Blocking."""
    if speed is not None and speed < 0:
        raise ValueError(f"speed must be positive, or 0/None for as fast as possible; got {speed}")
    columns = check_header(path)
    extra_columns = [column for column in columns if column not in MACHINE_EXPORT_COLUMNS]
    stop = stop or threading.Event()
    stats = ReplayStats()
    seq_start = first_seq()
    next_seq: dict[str, int] = {}

    client = make_client(f"factory-replay-{uuid.uuid4().hex[:8]}")
    publisher = BoundedPublisher(client, max_pending=MAX_PENDING_PUBLISHES)
    connect_and_wait(client, settings.mqtt_connection)

    started = time.monotonic()
    first_ts: datetime | None = None  # Timestamp that maps to `started`
    previous_target = started
    group_ts: datetime | None = None
    next_progress = started + 1.0
    lazy = pl.scan_csv(
        path,
        infer_schema=False,
        row_index_name=_LINE,
        row_index_offset=2,  # line numbers as an editor shows them (the header is line 1)
        truncate_ragged_lines=True,
        empty_string_is_null=False,
        quote_char=None,  # no field of the layout holds a comma; a stray quote then spoils one cell, not the file
        encoding="utf8-lossy",
    )
    try:
        for raw_batch in _readable_batches(lazy, path, stats):
            batch = _parse_batch(raw_batch)
            for row in batch.iter_rows(named=True):
                if stop.is_set():
                    stats.stopped_early = True
                    return stats
                stats.rows_read += 1
                if row["__bad"] is not None:
                    stats.bad_rows += 1
                    if len(stats.bad_row_examples) < MAX_BAD_ROW_EXAMPLES:
                        stats.bad_row_examples.append((row[_LINE], row["__bad"]))
                        log.warning("%s line %d skipped: %s", path, row[_LINE], row["__bad"])
                    continue
                ts: datetime = row[_TS].replace(tzinfo=UTC)
                if first_ts is None:
                    first_ts = ts
                if speed and ts != group_ts:
                    # A new group of rows: wait for its moment (never earlier than the previous group's).
                    target = max(previous_target, started + (ts - first_ts).total_seconds() / speed)
                    previous_target = target
                    if stop.wait(max(0.0, target - time.monotonic())):
                        stats.stopped_early = True
                        return stats
                group_ts = ts
                asset_id = f"machine-{int(row[_MACHINE]):02d}"
                seq = next_seq.get(asset_id, seq_start)
                next_seq[asset_id] = seq + 1
                payload = _row_payload(row, asset_id, seq, extra_columns)
                if not publisher.publish(telemetry_topic(settings.site, asset_id), dump_payload(payload), abort=stop):
                    stats.stopped_early = True
                    return stats
                stats.rows_published += 1
                stats.first_ts = stats.first_ts or ts
                stats.last_ts = ts
                if progress is not None and time.monotonic() >= next_progress:
                    stats.elapsed_s = time.monotonic() - started
                    progress(stats)
                    next_progress = time.monotonic() + 1.0
    finally:
        publisher.close(flush_timeout=10.0)
        stats.unacknowledged = publisher.pending
        stats.elapsed_s = time.monotonic() - started
        if stats.bad_rows > len(stats.bad_row_examples):
            log.warning("%s: %d bad rows skipped in all", path, stats.bad_rows)
    if progress is not None:
        progress(stats)
    return stats


__all__ = ["ReplayFileError", "ReplayStats", "check_header", "replay_csv"]
