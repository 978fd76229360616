"""AnswerCache: hot answers from memory, refreshed in the background, never stale past a bound."""

from __future__ import annotations

import threading

import pytest

from serving.ttl_cache import AnswerCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_fresh_then_stale_while_one_refresh_runs_then_refreshed() -> None:
    clock = FakeClock()
    cache = AnswerCache(ttl_s=1.0, max_stale_s=10.0, clock=clock)
    calls: list[str] = []
    assert cache.get("q", lambda: calls.append("first") or b"v1") == b"v1"
    assert cache.get("q", lambda: calls.append("unexpected") or b"x") == b"v1"  # fresh: not computed
    clock.now = 2.0
    release, refreshed = threading.Event(), threading.Event()

    def slow_refresh() -> bytes:
        calls.append("refresh")
        release.wait(5)
        refreshed.set()
        return b"v2"

    assert cache.get("q", slow_refresh) == b"v1"  # stale answer at once, refresh in the background
    assert cache.get("q", slow_refresh) == b"v1"  # a second caller does not start another refresh
    release.set()
    assert refreshed.wait(5)
    for _ in range(100):  # the refresh stores its answer right after computing it
        if cache.get("q", lambda: b"never") == b"v2":
            break
        threading.Event().wait(0.01)
    assert cache.get("q", lambda: b"never") == b"v2"
    assert calls == ["first", "refresh"]


def test_too_stale_or_expired_answers_are_computed_by_the_caller_and_errors_reach_it() -> None:
    clock = FakeClock()
    cache = AnswerCache(ttl_s=1.0, max_stale_s=10.0, clock=clock)
    cache.get("q", lambda: b"v1")
    clock.now = 11.0

    def down() -> bytes:
        raise RuntimeError("store down")

    with pytest.raises(RuntimeError, match="store down"):
        cache.get("q", down)
    cache.expire()
    assert cache.get("q", lambda: b"v3") == b"v3"


def test_the_number_of_queries_kept_is_bounded() -> None:
    cache = AnswerCache(ttl_s=60.0, max_entries=3, clock=FakeClock())
    for n in range(10):
        cache.get(("q", n), lambda n=n: str(n).encode())
    recomputed: list[int] = []
    cache.get(("q", 0), lambda: recomputed.append(0) or b"0")
    cache.get(("q", 9), lambda: recomputed.append(9) or b"9")
    assert recomputed == [0]  # the oldest queries were let go, the newest kept
