"""Crash-safe file writes: temporary file, fsync, rename, fsync of the directory.

A reader never sees a half-written file, and once these functions return the data survives a
SIGKILL or a power cut. A write that fails (disk full, quota, I/O error) leaves nothing behind:
its temporary file is removed, and the error raised is an `OSError` whose `errno` says why and
whose `filename` is the file we meant to write, whichever library did the writing. Polars reports
I/O failures from its Rust side as a bare `OSError` or a `ComputeError` without errno, only
"(os error 28)" in the text, so callers could not tell a full disk from a bug without this.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import polars as pl

_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_failure(exc: BaseException, path: Path) -> OSError | None:
    """The OS error behind a failed write of `path`, with errno and the path; None if it was no I/O error."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        match = _OS_ERROR_IN_TEXT.search(str(exc))
        if match is not None:
            code = int(match.group(1))
        elif isinstance(exc, OSError):
            code = errno.EIO
        else:
            return None
    return OSError(code, os.strerror(code), str(path))


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write(file)` so it appears whole or not at all."""
    tmp_name: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        fsync_dir(path.parent)
    except BaseException as exc:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        failure = write_failure(exc, path) if isinstance(exc, Exception) else None
        if failure is None:
            raise
        raise failure from exc


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda handle: handle.write(data))


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> None:
    write_atomic(path, lambda handle: frame.write_parquet(handle, compression="zstd"))


def append_durable(path: Path, data: bytes) -> None:
    """Append `data` to `path` and fsync it; if that fails, cut the file back to its old size.

    So a full disk never leaves half a record at the end for the next append to glue onto. (A
    crash mid-append can still leave a torn tail: readers of such files repair it on start.)
    Unbuffered on purpose: a buffered file would retry the failed write when asked to truncate.
    """
    created = not path.exists()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            old_size = os.fstat(fd).st_size
            try:
                pending = memoryview(data)
                while pending:
                    pending = pending[os.write(fd, pending) :]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, old_size)  # frees what was written, so this works on a full disk
                raise
        finally:
            os.close(fd)
        if created:
            fsync_dir(path.parent)
    except OSError as exc:
        raise (write_failure(exc, path) or exc) from exc
