"""A value recomputed at most once per time-to-live: keeps /health cheap yet current.

The clock is injectable so tests can expire entries without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

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
