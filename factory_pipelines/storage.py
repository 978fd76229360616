"""Where the platform's partition files live (a local path or object storage), and how they are written.

Sealed windows, typed rows, features and predictions are files that other processes read by
path: the window sensor lists sealed windows, window assets read them and write the rest, the API
and the backlog read typed rows. `FACTORY_STORAGE_URL` picks their root: unset, the data dir (as
before); a local path (a shared mount); or a URL fsspec knows, such as `s3://bucket/prefix` (with
`FACTORY_STORAGE_ENDPOINT_URL` for MinIO, Ceph or another S3-compatible server). Roots are
`UPath`s, local ones `pathlib.Path`s too, so every reader and writer runs unchanged on either.

A reader must never see half a file. Locally that takes a temporary file, fsync and rename
(`durable_files`); on object storage one PUT already is atomic (a completed multipart upload too):
an object appears whole or not at all. `write_bytes` and `write_parquet` are the one place that
knows the difference.

Credentials never pass through here: s3fs (botocore) reads them from AWS's standard chain
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE`, an instance or
pod role), so they are not in the settings, in Dagster's resource config, or in any log line.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import polars as pl
from upath import UPath

from factory_pipelines.durable_files import write_bytes_atomic, write_parquet_atomic

StoragePath = Path | UPath
"""A file or folder of partition files: a local path, or a `UPath` on object storage."""

_LOCAL_PROTOCOLS = frozenset({"", "file", "local"})
_S3_PROTOCOLS = frozenset({"s3", "s3a"})
# Our own retries (the collector's publisher, Dagster's run retries) wrap these; botocore's defaults
# would spend minutes on one request to a store that is down (60 s connect timeout, 5 attempts).
_S3_CLIENT_CONFIG: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 60,
    "retries": {"max_attempts": 3, "mode": "standard"},
}


def storage_root(url: str | None, *, default: Path, endpoint_url: str | None = None) -> UPath:
    """The root for `url` (a local path, `file://`, `s3://bucket/prefix`, ...); `default` when unset.

    Local roots are absolute, so a child process started elsewhere finds the same files. Listings
    are never cached: the window sensor lists the same prefix every few seconds while collectors
    add to it.
    """
    if not url:
        return UPath(default.expanduser().resolve())
    given = UPath(url)
    if given.protocol in _LOCAL_PROTOCOLS:
        return UPath(Path(given.path).expanduser().resolve())
    options: dict[str, Any] = {"use_listings_cache": False}
    if given.protocol in _S3_PROTOCOLS:
        options["config_kwargs"] = _S3_CLIENT_CONFIG
        if endpoint_url:
            options["endpoint_url"] = endpoint_url
    elif endpoint_url:
        raise ValueError(f"storage_endpoint_url is for s3:// storage, not {given.protocol}://")
    return UPath(url, **options)


def is_local(path: StoragePath) -> bool:
    """True for a path on this machine's file system (where rename makes a write atomic)."""
    return isinstance(path, Path)


def write_bytes(path: StoragePath, data: bytes) -> None:
    """Write `path` so that it appears whole or not at all (local: durably, see `durable_files`)."""
    if isinstance(path, Path):
        write_bytes_atomic(path, data)
    else:
        path.write_bytes(data)  # one PUT (multipart past 100 MB, still visible only once complete)


def write_parquet(frame: pl.DataFrame, path: StoragePath) -> None:
    """`frame` as a zstd Parquet file at `path`, whole or not at all."""
    if isinstance(path, Path):
        write_parquet_atomic(frame, path)
        return
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd")
    path.write_bytes(buffer.getvalue())


def read_parquet(path: StoragePath, columns: list[str] | None = None) -> pl.DataFrame:
    """A Parquet file from a local path (polars reads it itself) or from object storage (through fsspec).

    A partition file is one window's worth, so reading the object whole costs one GET.
    """
    if isinstance(path, Path):
        return pl.read_parquet(path, columns=columns)
    return pl.read_parquet(io.BytesIO(path.read_bytes()), columns=columns)


def scan_parquet(path: StoragePath) -> pl.LazyFrame:
    """A lazy frame over a Parquet file; an object is fetched whole first (see `read_parquet`)."""
    if isinstance(path, Path):
        return pl.scan_parquet(path)
    return read_parquet(path).lazy()


def parquet_files(directory: StoragePath) -> list[StoragePath]:
    """The Parquet files directly in `directory`, sorted by name (window keys sort by time); [] if none.

    Names only: hidden temporary files of a write in progress (`.name.parquet.XXXX.tmp`) never match.
    """
    if not directory.is_dir():
        return []
    files = [path for path in directory.iterdir() if path.name.endswith(".parquet") and not path.name.startswith(".")]
    return sorted(files, key=lambda path: path.name)
