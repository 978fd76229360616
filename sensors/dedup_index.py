"""The collector's memory of recently written (asset_id, seq) pairs, which makes redelivery harmless.

Bounded by a time horizon and an entry count. Entries live in time buckets (an eighth of the
horizon each) so forgetting old ones is cheap. The value kept per pair is the payload's own `ts` in
microseconds (None when the device sent none): a redelivery is byte-identical, so the same seq with
a different ts is a publisher that restarted its counter, and is kept rather than silently dropped.

The newest bucket (`_OpenBucket`) keeps, per asset, the seqs it was given in ascending order in
`array('q')`s, with a small dict for the rare seq that arrives below its asset's last one (a
restarted counter). When a newer bucket opens, the old one is frozen into sorted numpy arrays per
asset. Either way a pair takes about 16 bytes instead of about 250 as dict entries of tuples and
ints: at 2,000 messages/s dicts held about 200 MB of the collector's 332 (benchmarks/soak.py), and
an open bucket of dicts alone was about 30 MB of Python objects built and dropped every 75 s. A
publisher's seq only grows, so a new message is above everything kept for its asset and searches
nothing.
"""

from __future__ import annotations

import logging
from array import array
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("sensors.collector")

NO_TS = np.iinfo(np.int64).min  # the frozen form of "the device sent no ts"; no datetime is this far back
_ABSENT = object()


@dataclass(frozen=True)
class _FrozenBucket:
    bucket_id: int
    by_asset: dict[str, tuple[np.ndarray, np.ndarray]]  # asset -> (seqs sorted, their ts or NO_TS)
    size: int


@dataclass
class _OpenBucket:
    """The bucket pairs are added to: per asset, ascending seqs and their ts (NO_TS for none) in arrays."""

    seqs: dict[str, array] = field(default_factory=dict)
    stamps: dict[str, array] = field(default_factory=dict)
    below: dict[tuple[str, int], int | None] = field(default_factory=dict)  # seqs under their asset's last one
    size: int = 0

    def get(self, asset_id: str, seq: int) -> object:
        """The ts stored for this pair (None: sent without one), or _ABSENT."""
        seqs = self.seqs.get(asset_id)
        if seqs is not None and seq <= seqs[-1]:
            at = bisect_left(seqs, seq)
            if seqs[at] == seq:
                stamp = self.stamps[asset_id][at]
                return None if stamp == NO_TS else stamp
        if self.below:
            return self.below.get((asset_id, seq), _ABSENT)
        return _ABSENT

    def put(self, asset_id: str, seq: int, ts_us: int | None) -> None:
        """Store the pair's ts, replacing what this bucket held for it."""
        stamp = NO_TS if ts_us is None else ts_us
        seqs = self.seqs.get(asset_id)
        if seqs is None:
            self.seqs[asset_id], self.stamps[asset_id] = array("q", [seq]), array("q", [stamp])
        elif seq > seqs[-1]:
            seqs.append(seq)
            self.stamps[asset_id].append(stamp)
        else:
            at = bisect_left(seqs, seq)
            if seqs[at] == seq:
                self.stamps[asset_id][at] = stamp
                return
            self.size += (asset_id, seq) not in self.below
            self.below[(asset_id, seq)] = ts_us
            return
        self.size += 1

    def frozen(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per asset: all its seqs sorted, and their ts (NO_TS for none)."""
        by_asset = {
            asset_id: (np.array(seqs, dtype=np.int64), np.array(self.stamps[asset_id], dtype=np.int64))
            for asset_id, seqs in self.seqs.items()
        }
        extra: dict[str, tuple[list[int], list[int]]] = {}
        for (asset_id, seq), ts_us in self.below.items():
            seqs, stamps = extra.setdefault(asset_id, ([], []))
            seqs.append(seq)
            stamps.append(NO_TS if ts_us is None else ts_us)
        for asset_id, (seqs, stamps) in extra.items():
            held = by_asset.get(asset_id)
            all_seqs, all_stamps = np.array(seqs, dtype=np.int64), np.array(stamps, dtype=np.int64)
            if held is not None:
                all_seqs, all_stamps = np.concatenate([held[0], all_seqs]), np.concatenate([held[1], all_stamps])
            order = np.argsort(all_seqs, kind="stable")
            by_asset[asset_id] = (all_seqs[order], all_stamps[order])
        return by_asset


class DedupIndex:
    """Recently written (asset_id, seq) pairs: `seen` before writing a message, `add` once it is written."""

    def __init__(self, horizon_s: float, max_entries: int, buckets: int = 8) -> None:
        self._bucket_us = max(1, int(horizon_s * 1_000_000 / buckets))
        self._keep_buckets = buckets
        self._max_entries = max_entries
        self._open_id: int | None = None
        self._open = _OpenBucket()
        self._frozen: deque[_FrozenBucket] = deque()  # oldest first
        self._ceiling: dict[str, int] = {}  # asset -> the highest seq any frozen bucket holds for it
        self._size = 0
        self.evicted_early = 0  # entries forgotten before the horizon because of max_entries

    def __len__(self) -> int:
        return self._size

    def seen(self, asset_id: str, seq: int, ts_us: int | None) -> bool:
        stored = self._open.get(asset_id, seq)
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
        before = self._open.size
        self._open.put(asset_id, seq, ts_us)
        self._size += self._open.size - before
        if self._frozen:
            self._forget_old()

    def _freeze_open(self) -> None:
        if not self._open.size:
            return
        by_asset = self._open.frozen()
        for asset_id, (seqs, _) in by_asset.items():
            if int(seqs[-1]) > self._ceiling.get(asset_id, -1):
                self._ceiling[asset_id] = int(seqs[-1])
        self._frozen.append(_FrozenBucket(self._open_id or 0, by_asset, self._open.size))
        self._open = _OpenBucket()

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
