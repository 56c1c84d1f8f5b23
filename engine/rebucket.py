"""Calendar answers from finer rows: each row falls in the one bucket holding its instant.

The rows come from the ordinary pipeline (planner, both executors, the lake/warm seam) at
the coarsest tier whose buckets nest inside every calendar bucket of the request, so each
row lies wholly in one calendar bucket and the sums, counts, minima and maxima are exact.
Rows arrive in (user_id, metric, ts) order and a participant's buckets are disjoint and
sorted, so each (user, metric, bucket) is one run of rows: reduced with numpy per batch,
then the runs cut by batch ends are joined. Memory: one batch, plus the (small) answer.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.calendar import Bucket
from engine.query import to_us
from engine.shapes import CALENDAR
from engine.tiers import RESOLUTIONS, TIERS, Resolution


def exact_tier(boundaries: Iterable[datetime]) -> Resolution:
    """The coarsest tier whose buckets (aligned to the epoch) never straddle a boundary:
    1h for whole-hour offsets, 1m for :30 and :45 ones, raw for the odd historic offset."""
    instants = [to_us(b) for b in boundaries]
    for resolution in reversed(RESOLUTIONS):
        size = TIERS[resolution].bucket_s * 1_000_000
        if size and all(us % size == 0 for us in instants):
            return resolution
    return "raw"


def _columns(listed: Sequence[Bucket]) -> pa.Table:
    """One participant's buckets as columns (ts: the bucket's start; end in µs)."""
    starts = np.array([to_us(b.start) for b in listed], dtype=np.int64)
    return pa.table(
        {
            "ts": pa.array(starts).cast(CALENDAR.field("ts").type),
            "end_us": pa.array([to_us(b.end) for b in listed], pa.int64()),
            "local_date": pa.array([b.local_date for b in listed], pa.date32()),
            "tz": pa.array([b.tz for b in listed], pa.string()),
            "day_minutes": pa.array([b.minutes for b in listed], pa.int64()),
            "split": pa.array([b.split for b in listed], pa.bool_()),
        }
    )


class BucketTable:
    """The request's buckets as arrays: per user, sorted starts and ends. Participants
    handed the same list (one zone for a whole cohort) share its conversion."""

    def __init__(self, per_user: Mapping[int, Sequence[Bucket]]) -> None:
        self.users = sorted(per_user)
        converted: dict[int, pa.Table] = {}
        parts = []
        self.ranges: dict[int, tuple[int, int]] = {}  # user -> [first, last) bucket index
        position = 0
        for user_id in self.users:
            listed = per_user[user_id]
            if id(listed) not in converted:
                converted[id(listed)] = _columns(listed)
            parts.append(converted[id(listed)])
            self.ranges[user_id] = (position, position + len(listed))
            position += len(listed)
        self.count = position
        owners = np.repeat(
            np.array(self.users, dtype=np.int32), [len(per_user[u]) for u in self.users]
        )
        whole = pa.concat_tables([_columns(()), *parts]).combine_chunks()
        self.starts = whole.column("ts").cast(pa.int64()).to_numpy()
        self.ends = whole.column("end_us").to_numpy()
        self.attributes = whole.drop_columns(["end_us"]).add_column(
            0, "user_id", pa.array(owners, pa.int32())
        )

    def of(self, user_id: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(index of the user's first bucket, their starts, their ends) in µs."""
        first, last = self.ranges.get(user_id, (0, 0))
        return first, self.starts[first:last], self.ends[first:last]


def _rollup_columns(batch: pa.RecordBatch) -> tuple[np.ndarray, ...]:
    """(count, sum, min, max) per row; a raw row is a bucket of one."""
    names = batch.schema.names
    if "value" in names:
        value = batch.column(names.index("value")).to_numpy(zero_copy_only=False)
        return np.ones(len(value), dtype=np.int64), value, value, value
    return tuple(
        batch.column(names.index(name)).to_numpy(zero_copy_only=False)
        for name in ("count", "sum", "min", "max")
    )


def _series(batch: pa.RecordBatch, users: np.ndarray) -> Iterator[tuple[int, int]]:
    """[lo, hi) of each (user, metric) run of the batch. Metrics are sorted within a user,
    so their boundaries are found by bisection, not by comparing every row's name."""
    metric = batch.column(1)
    cuts = np.flatnonzero(users[1:] != users[:-1]) + 1
    for lo, hi in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(users)].tolist(), strict=True):
        while lo < hi:
            name = metric[lo].as_py()
            end = bisect.bisect_right(range(lo, hi), name, key=lambda i: metric[i].as_py())
            yield lo, lo + end
            lo += end


def _runs(batch: pa.RecordBatch, table: BucketTable) -> pa.Table:
    """One row per (bucket, metric) with rows in this batch: partial aggregates. A series'
    ts are sorted, so each bucket's rows are found by bisecting its bounds, and summed with
    reduceat: no per-row lookup."""
    users = batch.column(0).to_numpy(zero_copy_only=False)
    ts = batch.column(2).cast(pa.int64()).to_numpy(zero_copy_only=False)
    count, total, low, high = _rollup_columns(batch)
    buckets, metrics, cut_starts, cut_ends = [], [], [], []
    for lo, hi in _series(batch, users):
        first, starts, ends = table.of(int(users[lo]))
        begin = np.searchsorted(ts[lo:hi], starts, side="left") + lo
        finish = np.searchsorted(ts[lo:hi], ends, side="left") + lo
        filled = np.flatnonzero(finish > begin)
        if not len(filled):
            continue
        buckets.append(filled + first)
        metrics.append(np.full(len(filled), lo))
        cut_starts.append(begin[filled])
        cut_ends.append(finish[filled])
    if not buckets:
        return _empty_runs()
    begin, finish = np.concatenate(cut_starts), np.concatenate(cut_ends)
    # reduceat over [begin0, finish0, begin1, finish1, ...]: the even results are the
    # buckets, the odd ones the gaps between them (dropped).
    bounds = np.empty(2 * len(begin), dtype=np.int64)
    bounds[0::2], bounds[1::2] = begin, finish
    tail = bounds[-1] == len(ts)
    if tail:
        bounds = bounds[:-1]  # the last bucket runs to the batch's end

    def reduce(ufunc: np.ufunc, values: np.ndarray, kind: type) -> np.ndarray:
        return ufunc.reduceat(np.asarray(values, dtype=kind), bounds)[0::2]

    return pa.table(
        {
            "bucket": pa.array(np.concatenate(buckets)),
            "metric": pc.take(batch.column(1), pa.array(np.concatenate(metrics))),
            "count": reduce(np.add, count, np.int64),
            "sum": reduce(np.add, total, np.float64),
            "min": reduce(np.minimum, low, np.float64),
            "max": reduce(np.maximum, high, np.float64),
        }
    )


def _empty_runs() -> pa.Table:
    return pa.table(
        {
            "bucket": pa.array([], pa.int64()),
            "metric": pa.array([], pa.string()),
            "count": pa.array([], pa.int64()),
            "sum": pa.array([], pa.float64()),
            "min": pa.array([], pa.float64()),
            "max": pa.array([], pa.float64()),
        }
    )


def partials(batches: Iterator[pa.RecordBatch], table: BucketTable) -> pa.Table:
    """Partial aggregates per (bucket, metric) of rows in (user_id, metric, ts) order."""
    parts = [_runs(batch, table) for batch in batches if batch.num_rows]
    return pa.concat_tables([_empty_runs(), *parts])


def aggregate(batches: Iterator[pa.RecordBatch], table: BucketTable) -> pa.Table:
    """The calendar answer (CALENDAR rows in answer order) from rows in answer order."""
    return combine([partials(batches, table)], table)


def combine(parts: Sequence[pa.Table], table: BucketTable) -> pa.Table:
    """The calendar answer from partial aggregates (of any sources, in any order): a bucket
    read partly from the lake and partly from the warm store is summed from both."""
    runs = pa.concat_tables([_empty_runs(), *parts]).combine_chunks()
    if runs.num_rows == 0:
        return CALENDAR.empty_table()
    # Answer order: (user, metric, ts); a bucket's index orders (user, ts).
    owner = table.attributes.column("user_id").take(runs.column("bucket"))
    runs = (
        runs.append_column("owner", owner)
        .sort_by([("owner", "ascending"), ("metric", "ascending"), ("bucket", "ascending")])
        .drop_columns(["owner"])
        .combine_chunks()
    )
    # Runs cut by a batch end (or a segment's) continue in the next: join equal neighbours.
    bucket = runs.column("bucket").to_numpy()
    metric = runs.column("metric")
    same = np.r_[False, (np.diff(bucket) == 0)]
    same[1:] &= pc.equal(metric[1:], metric[:-1]).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(~same)
    count = np.add.reduceat(runs.column("count").to_numpy(), starts)
    total = np.add.reduceat(runs.column("sum").to_numpy(), starts)
    attributes = table.attributes.take(pa.array(bucket[starts]))
    columns = {
        "user_id": attributes.column("user_id"),
        "metric": pc.take(metric, pa.array(starts)),
        "ts": attributes.column("ts"),
        "count": count,
        "sum": total,
        "min": np.minimum.reduceat(runs.column("min").to_numpy(), starts),
        "max": np.maximum.reduceat(runs.column("max").to_numpy(), starts),
        "avg": total / count,
        "local_date": attributes.column("local_date"),
        "tz": attributes.column("tz"),
        "day_minutes": attributes.column("day_minutes"),
        "split": attributes.column("split"),
    }
    return pa.table(columns, schema=CALENDAR)
