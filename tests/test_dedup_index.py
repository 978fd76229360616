"""The collector's dedup index: the same answers as plain dicts per time bucket, in a fraction of the memory."""

from __future__ import annotations

import tracemalloc
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.dedup_index import DedupIndex

BUCKET_US = 1_000_000  # horizon 8 s in 8 buckets


class DictBuckets:
    """The reference: every bucket a dict of (asset_id, seq) -> ts, searched newest to oldest."""

    def __init__(self, max_entries: int, buckets: int = 8) -> None:
        self.keep, self.max_entries = buckets, max_entries
        self.buckets: deque[tuple[int, dict[tuple[str, int], int | None]]] = deque()
        self.size = self.evicted_early = 0

    def seen(self, asset_id: str, seq: int, ts_us: int | None) -> bool:
        for _, bucket in self.buckets:
            stored = bucket.get((asset_id, seq), "absent")
            if stored != "absent" and (stored is None or ts_us is None or stored == ts_us):
                return True
        return False

    def add(self, asset_id: str, seq: int, ts_us: int | None, received_us: int) -> None:
        bucket_id = received_us // BUCKET_US
        if not self.buckets or self.buckets[-1][0] < bucket_id:
            self.buckets.append((bucket_id, {}))
        bucket = self.buckets[-1][1]
        self.size += (asset_id, seq) not in bucket
        bucket[(asset_id, seq)] = ts_us
        while self.buckets[0][0] <= self.buckets[-1][0] - self.keep:
            self.size -= len(self.buckets.popleft()[1])
        while self.size > self.max_entries and len(self.buckets) > 1:
            dropped = len(self.buckets.popleft()[1])
            self.size -= dropped
            self.evicted_early += dropped


operations = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 40),
        st.one_of(st.none(), st.integers(0, 3)),  # the device's ts: few values, so restarts collide
        st.integers(-1_500_000, 1_500_000),  # receipt time step: mostly forward, sometimes back
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(ops=operations, max_entries=st.integers(1, 120))
def test_it_answers_like_a_dict_per_bucket(ops: list[tuple[str, int, int | None, int]], max_entries: int) -> None:
    index, reference = DedupIndex(8.0, max_entries), DictBuckets(max_entries)
    now = 10 * BUCKET_US
    for asset_id, seq, ts, step in ops:
        now = max(0, now + step)
        answer = reference.seen(asset_id, seq, ts)
        assert index.seen(asset_id, seq, ts) == answer
        assert index.seen(asset_id, seq, None) == reference.seen(asset_id, seq, None)
        if not answer:
            index.add(asset_id, seq, ts, now)
            reference.add(asset_id, seq, ts, now)
        assert len(index) == reference.size
        assert index.evicted_early == reference.evicted_early


def test_a_restarted_publisher_is_kept_and_its_redeliveries_dropped_after_freezing() -> None:
    index = DedupIndex(8.0, 1_000)
    for seq in range(100):
        index.add("robot-1", seq, 1_000 + seq, received_us=seq * 10_000)  # bucket 0
    index.add("robot-2", 0, None, received_us=BUCKET_US)  # opens bucket 1: bucket 0 is frozen now
    assert index.seen("robot-1", 42, 1_042)  # a redelivery, found in the frozen arrays
    assert index.seen("robot-1", 42, None)
    assert not index.seen("robot-1", 42, 9_999)  # same seq, another ts: the counter restarted
    assert not index.seen("robot-1", 100, 1_100)  # above every frozen seq: never searched
    index.add("robot-1", 5, None, received_us=2 * BUCKET_US)
    assert index.seen("robot-1", 5, 123)  # stored without a ts: any ts matches
    index.add("robot-3", 0, 0, received_us=20 * BUCKET_US)  # past the horizon: the old buckets go
    assert not index.seen("robot-1", 42, 1_042) and len(index) == 1


def test_a_full_horizon_takes_a_fraction_of_the_memory_of_dicts() -> None:
    """200,000 pairs of 100 publishers, as 100 s at 2,000 messages/s leave them."""

    def fill(index: DedupIndex | DictBuckets) -> int:
        tracemalloc.start()
        for step in range(200_000):
            index.add(f"asset-{step % 100:03d}", step // 100, 1_700_000_000_000_000 + step * 500, step * 40)
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return current

    compact, dicts = fill(DedupIndex(8.0, 10**6)), fill(DictBuckets(10**6))
    assert compact * 10 < dicts, (compact, dicts)


def test_the_open_bucket_is_as_compact_as_a_frozen_one() -> None:
    """150,000 pairs in the bucket still being filled (75 s at 2,000 messages/s): arrays, not dict entries."""
    index = DedupIndex(600.0, 10**6)
    tracemalloc.start()
    for step in range(150_000):
        index.add(f"asset-{step % 100:03d}", step // 100, 1_700_000_000_000_000 + step * 500, 0)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(index) == 150_000
    assert current < 150_000 * 24, f"{current / 150_000:.0f} bytes a pair"
    assert index.seen("asset-042", 1_000, 1_700_000_000_000_000 + 100_042 * 500)
