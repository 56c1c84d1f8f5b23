"""Merge sorted Arrow streams into one, and slice a stream into a page.

Each segment's stream is sorted by (user_id, metric, ts) and segments cover disjoint
(user, time) ranges, so a k-way merge that emits whole runs (slices, not rows) keeps the
answer in order while holding one batch per stream.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KeyTuple = tuple[int, int, int]


@dataclass
class _Head:
    stream: Iterator[pa.RecordBatch]
    batch: pa.RecordBatch
    users: np.ndarray
    metrics: np.ndarray
    ts: np.ndarray
    pos: int = 0

    def key(self, i: int) -> KeyTuple:
        return (int(self.users[i]), int(self.metrics[i]), int(self.ts[i]))


def _load(stream: Iterator[pa.RecordBatch], metric_order: pa.Array) -> _Head | None:
    for batch in stream:
        if batch.num_rows == 0:
            continue
        return _Head(
            stream,
            batch,
            batch.column(0).to_numpy(zero_copy_only=False),
            pc.index_in(batch.column(1), value_set=metric_order).to_numpy(zero_copy_only=False),
            batch.column(2).cast(pa.int64()).to_numpy(zero_copy_only=False),
        )
    return None


def merge_sorted(
    streams: Sequence[Iterator[pa.RecordBatch]], metrics: Sequence[str]
) -> Iterator[pa.RecordBatch]:
    """One stream in (user_id, metric, ts) order from several, each already in that order."""
    if len(streams) == 1:
        yield from streams[0]
        return
    metric_order = pa.array(sorted(metrics), pa.string())
    heads = [h for h in (_load(s, metric_order) for s in streams) if h is not None]
    while heads:
        heads.sort(key=lambda h: h.key(h.pos))
        head = heads[0]
        end = head.batch.num_rows
        if len(heads) > 1:
            bound = heads[1].key(heads[1].pos)
            end = bisect.bisect_left(range(head.pos, end), bound, key=head.key) + head.pos
        yield head.batch.slice(head.pos, end - head.pos)
        head.pos = end
        if head.pos >= head.batch.num_rows:
            refilled = _load(head.stream, metric_order)
            heads.pop(0)
            if refilled is not None:
                heads.append(refilled)


def take(
    stream: Iterator[pa.RecordBatch], skip: int, limit: int | None
) -> Iterator[pa.RecordBatch]:
    """Drop the first `skip` rows, then yield at most `limit` rows (None: all)."""
    for batch in stream:
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        if skip:
            batch, skip = batch.slice(skip), 0
        if limit is not None:
            if limit <= 0:
                return
            if batch.num_rows > limit:
                batch = batch.slice(0, limit)
            limit -= batch.num_rows
        yield batch
        if limit == 0:
            return
