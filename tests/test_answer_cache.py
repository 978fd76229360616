"""AnswerCache: hot answers from memory, refreshed in the background, never stale past a bound."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable

import pytest

from serving.ttl_cache import AnswerCache


def get(cache: AnswerCache, key: Hashable, compute: Callable[[], bytes]) -> bytes:
    """One request's answer, as an async route awaits it."""
    return asyncio.run(cache.answer(key, compute))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_fresh_then_stale_while_one_refresh_runs_then_refreshed() -> None:
    clock = FakeClock()
    cache = AnswerCache(ttl_s=1.0, max_stale_s=10.0, clock=clock)
    calls: list[str] = []
    assert get(cache, "q", lambda: calls.append("first") or b"v1") == b"v1"
    assert get(cache, "q", lambda: calls.append("unexpected") or b"x") == b"v1"  # fresh: not computed
    clock.now = 2.0
    release, refreshed = threading.Event(), threading.Event()

    def slow_refresh() -> bytes:
        calls.append("refresh")
        release.wait(5)
        refreshed.set()
        return b"v2"

    assert get(cache, "q", slow_refresh) == b"v1"  # stale answer at once, refresh in the background
    assert get(cache, "q", slow_refresh) == b"v1"  # a second caller does not start another refresh
    release.set()
    assert refreshed.wait(5)
    for _ in range(100):  # the refresh stores its answer right after computing it
        if get(cache, "q", lambda: b"never") == b"v2":
            break
        threading.Event().wait(0.01)
    assert get(cache, "q", lambda: b"never") == b"v2"
    assert calls == ["first", "refresh"]


def test_too_stale_or_expired_answers_are_computed_by_the_caller_and_errors_reach_it() -> None:
    clock = FakeClock()
    cache = AnswerCache(ttl_s=1.0, max_stale_s=10.0, clock=clock)
    get(cache, "q", lambda: b"v1")
    clock.now = 11.0

    def down() -> bytes:
        raise RuntimeError("store down")

    with pytest.raises(RuntimeError, match="store down"):
        get(cache, "q", down)
    cache.expire()
    assert get(cache, "q", lambda: b"v3") == b"v3"


def test_the_number_of_queries_kept_is_bounded() -> None:
    cache = AnswerCache(ttl_s=60.0, max_entries=3, clock=FakeClock())
    for n in range(10):
        get(cache, ("q", n), lambda n=n: str(n).encode())
    recomputed: list[int] = []
    get(cache, ("q", 0), lambda: recomputed.append(0) or b"0")
    get(cache, ("q", 9), lambda: recomputed.append(9) or b"9")
    assert recomputed == [0]  # the oldest queries were let go, the newest kept


def test_callers_that_miss_together_share_one_computation_and_its_error() -> None:
    cache = AnswerCache(ttl_s=1.0, clock=FakeClock())
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow() -> bytes:
        calls.append("compute")
        started.set()
        release.wait(5)
        return b"v1"

    async def many_callers(compute: Callable[[], bytes]) -> list[bytes | BaseException]:
        first = asyncio.ensure_future(cache.answer("q", compute))
        await asyncio.to_thread(started.wait, 5)  # the first caller's computation is under way
        others = [asyncio.ensure_future(cache.answer("q", compute)) for _ in range(20)]
        release.set()
        return await asyncio.gather(first, *others, return_exceptions=True)

    assert asyncio.run(many_callers(slow)) == [b"v1"] * 21
    assert calls == ["compute"]

    cache.expire()
    started.clear()
    release.clear()

    def down() -> bytes:
        calls.append("down")
        started.set()
        release.wait(5)
        raise RuntimeError("store down")

    answers = asyncio.run(many_callers(down))
    assert len(answers) == 21 and all(isinstance(a, RuntimeError) for a in answers)
    assert calls == ["compute", "down"]
    assert get(cache, "q", lambda: b"v2") == b"v2"  # a failure is not kept: the next caller computes again
