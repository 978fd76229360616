"""The collector's memory of recently written (asset_id, seq) pairs, which makes redelivery harmless.

Bounded by a time horizon and an entry count. Entries live in time buckets (an eighth of the
horizon each) so forgetting old ones is cheap. The value kept per pair is the payload's own `ts` in
microseconds (None when the device sent none): a redelivery is byte-identical, so the same seq with
a different ts is a publisher that restarted its counter, and is kept rather than silently dropped.

Only the newest bucket is a dict. When a newer one opens, the old one is frozen into sorted numpy
arrays per asset: 16 bytes a pair instead of about 250 as dict entries of tuples and ints. At
2,000 messages/s the dicts held about 200 MB of the collector's 332 (benchmarks/soak.py); the
arrays hold the same horizon in under 20 MB. A publisher's seq only grows,
so a new message is above everything frozen for its asset (`_ceiling`) and never searches them.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("sensors.collector")

NO_TS = np.iinfo(np.int64).min  # the frozen form of "the device sent no ts"; no datetime is this far back
_ABSENT = object()


@dataclass(frozen=True)
class _FrozenBucket:
    bucket_id: int
    by_asset: dict[str, tuple[np.ndarray, np.ndarray]]  # asset -> (seqs sorted, their ts or NO_TS)
    size: int


class DedupIndex:
    """Recently written (asset_id, seq) pairs: `seen` before writing a message, `add` once it is written."""

    def __init__(self, horizon_s: float, max_entries: int, buckets: int = 8) -> None:
        self._bucket_us = max(1, int(horizon_s * 1_000_000 / buckets))
        self._keep_buckets = buckets
        self._max_entries = max_entries
        self._open_id: int | None = None
        self._open: dict[tuple[str, int], int | None] = {}
        self._frozen: deque[_FrozenBucket] = deque()  # oldest first
        self._ceiling: dict[str, int] = {}  # asset -> the highest seq any frozen bucket holds for it
        self._size = 0
        self.evicted_early = 0  # entries forgotten before the horizon because of max_entries

    def __len__(self) -> int:
        return self._size

    def seen(self, asset_id: str, seq: int, ts_us: int | None) -> bool:
        stored = self._open.get((asset_id, seq), _ABSENT)
        if stored is not _ABSENT and (stored is None or ts_us is None or stored == ts_us):
            return True
        ceiling = self._ceiling.get(asset_id)
        if ceiling is None or seq > ceiling:
            return False
        for bucket in self._frozen:
            arrays = bucket.by_asset.get(asset_id)
            if arrays is None:
                continue
            seqs, stamps = arrays
            at = int(seqs.searchsorted(seq))
            if at < len(seqs) and seqs[at] == seq:
                stamp = int(stamps[at])
                if ts_us is None or stamp in (NO_TS, ts_us):
                    return True
        return False

    def add(self, asset_id: str, seq: int, ts_us: int | None, received_us: int) -> None:
        bucket_id = received_us // self._bucket_us
        if self._open_id is None:
            self._open_id = bucket_id
        elif bucket_id > self._open_id:
            self._freeze_open()
            self._open_id = bucket_id
        # older receipts (read back on start) join the open bucket
        key = (asset_id, seq)
        if key not in self._open:
            self._size += 1
        self._open[key] = ts_us
        if self._frozen:
            self._forget_old()

    def _freeze_open(self) -> None:
        if not self._open:
            return
        grouped: dict[str, tuple[list[int], list[int]]] = {}
        for (asset_id, seq), ts_us in self._open.items():
            seqs, stamps = grouped.setdefault(asset_id, ([], []))
            seqs.append(seq)
            stamps.append(NO_TS if ts_us is None else ts_us)
        by_asset: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for asset_id, (seqs, stamps) in grouped.items():
            seq_array = np.array(seqs, dtype=np.int64)
            order = np.argsort(seq_array, kind="stable")
            by_asset[asset_id] = (seq_array[order], np.array(stamps, dtype=np.int64)[order])
            top = int(seq_array[order[-1]])
            if top > self._ceiling.get(asset_id, -1):
                self._ceiling[asset_id] = top
        self._frozen.append(_FrozenBucket(self._open_id or 0, by_asset, len(self._open)))
        self._open = {}

    def _forget_old(self) -> None:
        newest = self._open_id or 0
        while self._frozen and self._frozen[0].bucket_id <= newest - self._keep_buckets:
            self._drop_oldest()
        while self._size > self._max_entries and self._frozen:
            dropped = self._drop_oldest()
            self.evicted_early += dropped
            log.warning("dedup index over %d entries: forgot %d before the horizon", self._max_entries, dropped)

    def _drop_oldest(self) -> int:
        bucket = self._frozen.popleft()
        self._size -= bucket.size
        for asset_id in bucket.by_asset:
            tops = [int(other.by_asset[asset_id][0][-1]) for other in self._frozen if asset_id in other.by_asset]
            if tops:
                self._ceiling[asset_id] = max(tops)
            else:
                del self._ceiling[asset_id]
        return bucket.size
