"""A value recomputed at most once per time-to-live: keeps /health cheap yet current.

The clock is injectable so tests can expire entries without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

K = TypeVar("K")
V = TypeVar("V")

Clock = Callable[[], float]


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    loaded_at: float


class TtlCache(Generic[K, V]):
    """Per-key cache over a loader; one load per key at a time, concurrent readers wait for it.

    The loader should not raise: a failure worth remembering is a value too (otherwise every
    caller would retry a slow failing probe).
    """

    def __init__(self, loader: Callable[[K], V], ttl_s: float, clock: Clock = time.monotonic) -> None:
        if ttl_s < 0:
            raise ValueError("ttl_s must be >= 0")
        self._loader = loader
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[K, _Entry[V]] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[K, threading.Lock] = {}

    def get(self, key: K) -> V:
        entry = self._fresh(key)
        if entry is not None:
            return entry.value
        with self._key_lock(key):
            entry = self._fresh(key)  # another caller may have loaded it while we waited
            if entry is not None:
                return entry.value
            value = self._loader(key)
            with self._lock:
                self._entries[key] = _Entry(value, self._clock())
            return value

    def age_s(self, key: K) -> float | None:
        with self._lock:
            entry = self._entries.get(key)
        return None if entry is None else self._clock() - entry.loaded_at

    def expire(self) -> None:
        """Forget everything: the next `get` of each key loads again."""
        with self._lock:
            self._entries.clear()

    def _fresh(self, key: K) -> _Entry[V] | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or self._clock() - entry.loaded_at >= self.ttl_s:
            return None
        return entry

    def _key_lock(self, key: K) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())


class AnswerCache:
    """Serialized answers of hot read routes, by query, for a short time and a bounded number of queries.

    Predictions change once per window and the live picture a few times a second, so a second-old
    answer costs a reader nothing, while answering from memory is what lets one worker serve
    hundreds of requests per second. An answer past its TTL is still served while one background
    thread computes the next (so no request waits on the store), unless it is older than
    `max_stale_s`; then, as for a query never asked, the requests wait for one computation of it,
    and an error (the store is down) reaches them instead of being cached.
    """

    def __init__(
        self, ttl_s: float, max_entries: int = 64, max_stale_s: float = 10.0, clock: Clock = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_stale_s = max_stale_s
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[bytes, float]] = OrderedDict()
        self._refreshing: set[Hashable] = set()
        self._computing: dict[Hashable, asyncio.Future[bytes]] = {}  # only touched on the event loop
        self._lock = threading.Lock()

    async def answer(self, key: Hashable, compute: Callable[[], bytes]) -> bytes:
        """The held answer to `key`, else `compute`'s, computed once in a worker thread for every caller.

        Async so that a held answer, nearly every request, costs no worker thread: a sync route pays
        a hop to the thread pool on every request. Callers that find no answer while one is being
        computed wait for that one: under 500 requests/s, each computing its own piled up a second
        of work on the GIL.
        """
        now = self._clock()
        held = self._held(key, compute, now)
        if held is not None:
            return held
        computing = self._computing.get(key)
        if computing is None:
            computing = asyncio.ensure_future(self._compute(key, compute, now))
            self._computing[key] = computing
            computing.add_done_callback(lambda done: self._computed(key, done))
        return await asyncio.shield(computing)  # a caller that goes away does not cancel the others' answer

    async def _compute(self, key: Hashable, compute: Callable[[], bytes], now: float) -> bytes:
        return self._store(key, await run_in_threadpool(compute), now)

    def _computed(self, key: Hashable, done: asyncio.Future[bytes]) -> None:
        if self._computing.get(key) is done:
            del self._computing[key]
        if not done.cancelled():
            done.exception()  # marks a failure as seen: its callers got it, even if all of them went away

    def _held(self, key: Hashable, compute: Callable[[], bytes], now: float) -> bytes | None:
        """The answer to serve now, if one is held and not too stale; a stale one starts a refresh."""
        with self._lock:
            held = self._entries.get(key)
            if held is None:
                return None
            age = now - held[1]
            if age < self.ttl_s:
                return held[0]
            if age < self.max_stale_s:
                if key not in self._refreshing:
                    self._refreshing.add(key)
                    threading.Thread(target=self._refresh, args=(key, compute), daemon=True).start()
                return held[0]
        return None

    def _refresh(self, key: Hashable, compute: Callable[[], bytes]) -> None:
        try:
            self._store(key, compute(), self._clock())
        except Exception:  # the next request past max_stale_s computes itself and sees the error
            logging.getLogger(__name__).debug("background refresh of %r failed", key, exc_info=True)
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def _store(self, key: Hashable, body: bytes, at: float) -> bytes:
        with self._lock:
            self._entries[key] = (body, at)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return body

    def expire(self) -> None:
        with self._lock:
            self._entries.clear()
