"""Publishing sealed windows: the collector seals them on local disk, this puts them where the platform reads.

Why two steps (DESIGN.md, "Streams, windows, partitions"): the collector acknowledges a message only
once it is durably on its local disk, and that must never wait on the network. When the store is the
data dir (`FACTORY_STORAGE_URL` unset) the local seal already is the publication and no publisher
runs. Otherwise (object storage, another mount) this thread copies each sealed window into the store
whole (`storage.write_bytes`: one PUT, or temp file + fsync + rename on a local path), so the window
sensor can only ever list complete windows; then a marker `published/{YYYYMMDD}/{key}` next to the
collector's windows records that it is there.

* The store does not answer: the windows stay on local disk and are retried, oldest first, with
  exponential backoff (tenacity). One ERROR when it starts, a WARNING every minute while it lasts,
  INFO when the store is back; `PublisherStats` says how many wait. Collecting and acknowledging go
  on meanwhile, so only local disk space bounds how long the store may be away.
* A crash between the seal and the PUT (or before the marker): the next start finds the window
  without its marker and puts it again. Same key, same bytes: a second PUT changes nothing.
* Local copies are kept while the collector may read them back (after a restart its dedup index reads
  the windows of `keep_seconds` before its newest one; a new window's part number counts the windows
  of its interval), then removed. A window not yet in the store is never removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from tenacity import RetryCallState, Retrying, stop_when_event_set, wait_exponential

from factory_pipelines.settings import FactorySettings
from factory_pipelines.storage import StoragePath, write_bytes
from factory_pipelines.windows import WindowKeyError, iter_sealed_keys, parse_window_key, sealed_window_path

log = logging.getLogger("sensors.collector")  # the collector's log: this is part of it

PUBLISHED_DIR = "published"
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
POLL_S = 5.0  # a pass also runs this often without being told of a new window
STILL_DOWN_REPORT_S = 60.0
_ERROR_CHARS = 500


@dataclass
class PublisherStats:
    """Counters since start; `WindowPublisher.stats` hands out a copy."""

    published: int = 0  # windows put into the store
    waiting: int = 0  # sealed on local disk, not yet in the store (as of the last pass)
    failures: int = 0  # failed attempts, retries included
    store_unreachable: bool = False  # the last attempt failed
    last_error: str | None = None
    local_copies_removed: int = 0


class WindowPublisher:
    """Copies one collector's sealed windows from its local `windows_dir` into the store (module docstring)."""

    def __init__(
        self,
        local_windows_dir: Path,
        store_windows_dir: StoragePath,
        collector_id: str,
        *,
        keep_seconds: float,
        retry_first_s: float = RETRY_FIRST_S,
        retry_max_s: float = RETRY_MAX_S,
        poll_s: float = POLL_S,
    ) -> None:
        self.local_windows_dir = local_windows_dir
        self.store_windows_dir = store_windows_dir
        self.collector_id = collector_id
        self.keep_seconds = keep_seconds
        self.retry_first_s = retry_first_s
        self.retry_max_s = retry_max_s
        self.poll_s = poll_s
        self.markers_dir = local_windows_dir / PUBLISHED_DIR
        self._stats = PublisherStats()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down_since = 0.0
        self._last_report = 0.0

    @classmethod
    def for_settings(cls, settings: FactorySettings, *, keep_seconds: float) -> WindowPublisher | None:
        """The publisher for a collector with these settings; None when the store is its own windows dir."""
        if settings.store_windows_dir == settings.windows_dir:
            return None
        return cls(settings.windows_dir, settings.store_windows_dir, settings.collector_id, keep_seconds=keep_seconds)

    @property
    def stats(self) -> PublisherStats:
        with self._lock:
            return dataclasses.replace(self._stats)

    # ---- lifecycle ----

    def start(self) -> None:
        """Publish what an earlier run left on local disk, then every window as it is sealed."""
        if self._thread is not None:
            raise RuntimeError("this WindowPublisher is already running")
        log.info("publishing sealed windows of %s to %s", self.collector_id, self.store_windows_dir)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"publish-{self.collector_id}", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """A window was sealed: publish it now rather than at the next poll."""
        self._wake.set()

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop retrying; try once more, within `drain_s`, to publish what waits. The rest stays for the next start."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join()
        deadline = time.monotonic() + drain_s
        left = self._waiting()
        for index, (key, path) in enumerate(left):
            if time.monotonic() > deadline:
                break
            try:
                self._publish(key, path)
            except Exception as exc:  # one try each: a store that is down must not hold up the stop
                self._failed(exc, len(left) - index)
                break
        waiting = self._waiting()
        if waiting:
            log.warning(
                "stopping with %d sealed windows not yet in the store (%s .. %s); they stay in %s and the next "
                "start publishes them",
                len(waiting),
                waiting[0][0],
                waiting[-1][0],
                self.local_windows_dir,
            )

    # ---- the thread ----

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.publish_waiting()
                self.remove_old_copies()
            except Exception:  # the thread must outlive any surprise; the next pass tries again
                log.exception("publishing sealed windows failed; trying again in %.0f s", self.poll_s)
            self._wake.wait(self.poll_s)

    def publish_waiting(self) -> int:
        """Publish every window waiting on local disk, oldest first, retrying each until it is in (or stop)."""
        done = 0
        waiting = self._waiting()
        for key, path in waiting:
            retrying = Retrying(
                wait=wait_exponential(multiplier=self.retry_first_s, max=self.retry_max_s),
                stop=stop_when_event_set(self._stop),
                sleep=self._stop.wait,
                before_sleep=self._failed_attempt,
                reraise=True,
            )
            try:
                retrying(self._publish, key, path)
            except Exception:
                return done  # stopping: what is left waits for `stop`'s last try or the next start
            done += 1
        return done

    def _waiting(self) -> list[tuple[str, Path]]:
        """This collector's sealed windows on local disk that are not in the store yet, oldest first."""
        waiting = [
            (key, Path(sealed_window_path(self.local_windows_dir, key)))
            for key in iter_sealed_keys(self.local_windows_dir)
            if self._is_mine(key) and not self._marker(key).exists()
        ]
        with self._lock:
            self._stats.waiting = len(waiting)
        return waiting

    def _publish(self, key: str, path: Path) -> None:
        target = sealed_window_path(self.store_windows_dir, key)
        write_bytes(target, path.read_bytes())
        marker = self._marker(key)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        with self._lock:
            stats = self._stats
            stats.published += 1
            stats.waiting = max(0, stats.waiting - 1)
            was_down, stats.store_unreachable = stats.store_unreachable, False
        log.info("published window %s to %s", key, target)
        if was_down:
            log.info(
                "the store answers again after %.0f s: publishing the windows that waited",
                time.monotonic() - self._down_since,
            )

    def _failed_attempt(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None:  # counted afresh: windows sealed during the outage wait too
            self._failed(exc, len(self._waiting()), next_try_s=state.upcoming_sleep)

    def _failed(self, exc: BaseException, waiting: int, next_try_s: float | None = None) -> None:
        """Count a failed attempt; report the start of an outage once, then once a minute."""
        error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        now = time.monotonic()
        with self._lock:
            stats = self._stats
            stats.failures += 1
            stats.last_error = error
            first, stats.store_unreachable = not stats.store_unreachable, True
        if first:
            self._down_since = self._last_report = now
            log.error(
                "cannot publish sealed windows to %s (%s): %d wait on local disk in %s, nothing is lost; "
                "retrying with backoff up to every %.0f s",
                self.store_windows_dir,
                error,
                waiting,
                self.local_windows_dir,
                self.retry_max_s,
            )
        elif now - self._last_report >= STILL_DOWN_REPORT_S:
            self._last_report = now
            log.warning(
                "the store is still unreachable after %.0f s: %d sealed windows wait on local disk (%s)%s",
                now - self._down_since,
                waiting,
                error,
                "" if next_try_s is None else f"; next try in {next_try_s:.1f} s",
            )

    # ---- local copies ----

    def remove_old_copies(self) -> int:
        """Remove local copies of published windows older than `keep_seconds` before the newest one."""
        keys = [key for key in iter_sealed_keys(self.local_windows_dir) if self._is_mine(key)]
        if not keys:
            return 0
        cutoff = parse_window_key(keys[-1])[0] - timedelta(seconds=self.keep_seconds)
        removed = 0
        for key in keys:
            if parse_window_key(key)[0] >= cutoff:
                break
            marker = self._marker(key)
            if not marker.exists():
                continue  # not in the store yet: never removed
            Path(sealed_window_path(self.local_windows_dir, key)).unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
            removed += 1
        newest_day = keys[-1][:8]
        for root in (self.local_windows_dir / "sealed", self.markers_dir):
            for day in root.iterdir() if root.is_dir() else []:
                if day.is_dir() and day.name < newest_day and not any(day.iterdir()):
                    with contextlib.suppress(OSError):  # a collector sharing the dir may have just written there
                        day.rmdir()
        if removed:
            with self._lock:
                self._stats.local_copies_removed += removed
        return removed

    def _marker(self, key: str) -> Path:
        return self.markers_dir / key[:8] / key

    def _is_mine(self, key: str) -> bool:
        try:
            return parse_window_key(key)[1] == self.collector_id
        except WindowKeyError:
            return False
