"""Sealed telemetry windows: the file contract between the collector and the Dagster sensor.

A window is every message one collector received in one interval of `window_seconds`
(aligned to the UTC epoch; a window that reaches `window_max_rows` is sealed early and the
interval continues in the next part). Its key sorts by time:

    20261125T163000Z-collector-1-000   (window start, collector id, part)

A sealed window is one Parquet file, written atomically, at
`{windows_dir}/sealed/{YYYYMMDD}/{key}.parquet`, with the columns of `WINDOW_SCHEMA`: the
envelope of each message plus its validated payload as JSON (unknown extra fields included), so
nothing a device sent is lost. Windows are assigned by time of receipt. `windows_dir` is a local
path or a folder on object storage (`storage.py`): the collector's own, or the store's, where the
collector publishes what it sealed and where everyone else reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import polars as pl

from factory_pipelines.storage import StoragePath, parquet_files, read_parquet

WINDOW_SCHEMA: dict[str, pl.DataType] = {
    "asset_id": pl.String(),
    "kind": pl.String(),
    "site": pl.String(),
    "topic": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
    "received_at": pl.Datetime("us", "UTC"),
    "seq": pl.Int64(),
    "payload": pl.String(),
}

_KEY_RE = re.compile(r"^(?P<start>\d{8}T\d{6}Z)-(?P<collector>[A-Za-z0-9_.-]+)-(?P<part>\d{3,})$")
_KEY_TIME_FORMAT = "%Y%m%dT%H%M%SZ"


class WindowKeyError(ValueError):
    pass


def window_key(start: datetime, collector_id: str, part: int = 0) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", collector_id):
        raise WindowKeyError(f"collector id {collector_id!r} may only hold letters, digits, _ . -")
    return f"{start.astimezone(UTC):{_KEY_TIME_FORMAT}}-{collector_id}-{part:03d}"


def parse_window_key(key: str) -> tuple[datetime, str, int]:
    """(window start, collector id, part) of a key."""
    match = _KEY_RE.match(key)
    if match is None:
        raise WindowKeyError(f"{key!r} is not a window key like 20261125T163000Z-collector-1-000")
    start = datetime.strptime(match["start"], _KEY_TIME_FORMAT).replace(tzinfo=UTC)
    return start, match["collector"], int(match["part"])


def window_start(key: str) -> datetime:
    return parse_window_key(key)[0]


def aligned_window_start(moment: datetime, window_seconds: float) -> datetime:
    """Start of the epoch-aligned interval of `window_seconds` that holds `moment`."""
    epoch = moment.astimezone(UTC).timestamp()
    start = epoch - (epoch % window_seconds)
    return datetime.fromtimestamp(int(start), UTC)


def sealed_dir(windows_dir: StoragePath) -> StoragePath:
    return windows_dir / "sealed"


def sealed_window_path(windows_dir: StoragePath, key: str) -> StoragePath:
    return sealed_dir(windows_dir) / key[:8] / f"{key}.parquet"


def iter_sealed_keys(windows_dir: StoragePath, since: datetime | None = None) -> Iterator[str]:
    """Keys of sealed windows in key (time) order, optionally only those starting at or after `since`.

    Day folders before `since` are not listed (on object storage each listing is a request).
    """
    root = sealed_dir(windows_dir)
    if not root.is_dir():
        return
    since_day = f"{since.astimezone(UTC):%Y%m%d}" if since else None
    days = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
    for day in days:
        if since_day and day.name < since_day:
            continue
        for path in parquet_files(day):
            key = path.stem
            if not _KEY_RE.match(key):
                continue
            if since is not None and window_start(key) < since:
                continue
            yield key


def read_window(windows_dir: StoragePath, key: str) -> pl.DataFrame:
    path = sealed_window_path(windows_dir, key)
    if not path.is_file():
        raise FileNotFoundError(f"sealed window {key} not found at {path}")
    return read_parquet(path)


def empty_window() -> pl.DataFrame:
    return pl.DataFrame(schema=WINDOW_SCHEMA)


def window_bounds(key: str, window_seconds: float) -> tuple[datetime, datetime]:
    start = window_start(key)
    return start, start + timedelta(seconds=window_seconds)
