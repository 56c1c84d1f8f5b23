"""Calendar buckets computed once: the warm store's calendar_cache (sync/migrations/009).

A bucket is an exact UTC interval of one participant and metric, so its count, sum, min and
max are a function of the rows inside it, whatever zone asked for it: a zone-history edit
only changes which intervals are asked (they miss). What can change an entry's value is a
write to the rows, and every such write gives the UTC days it touches a fresh
day_state.change_seq. So:

1. `read` takes the change numbers of the participants' days first, then the entries; an
   entry is used only when the numbers it was stored with equal those (`hits`).
2. The misses are computed by the ordinary pipeline, which starts after step 1 and so sees
   every write committed before it.
3. `fill` stores them with the numbers of step 1. A write that commits after step 1 (a late
   row racing the fill) has a newer number than the one stored: the entry is never served,
   and the next fill replaces it. No writer needs to know the cache exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from engine.query import EPOCH, DataQuery, from_us, to_us
from engine.rebucket import BucketTable

DAY_US = 86_400_000_000

_SEQS = """
SELECT user_id, day - DATE '1970-01-01', change_seq FROM day_state
WHERE user_id = ANY(%(users)s) AND day BETWEEN %(first)s AND %(last)s
"""
_ENTRIES = """
SELECT user_id, metric, start_ts, end_ts, count, sum, min, max, day_seqs FROM calendar_cache
WHERE user_id = ANY(%(users)s) AND metric = ANY(%(metrics)s)
AND start_ts BETWEEN %(first)s AND %(last)s
"""
_STAGE = """
CREATE TEMPORARY TABLE stratum_calendar_fill (
    user_id integer, metric text COLLATE "C", start_ts timestamptz, end_ts timestamptz,
    count bigint, sum double precision, min double precision, max double precision,
    day_seqs bigint[]
) ON COMMIT DROP
"""
_UPSERT = """
INSERT INTO calendar_cache (user_id, metric, start_ts, end_ts, count, sum, min, max, day_seqs)
SELECT * FROM stratum_calendar_fill
ON CONFLICT (user_id, metric, start_ts, end_ts) DO UPDATE
SET count = EXCLUDED.count, sum = EXCLUDED.sum, min = EXCLUDED.min, max = EXCLUDED.max,
    day_seqs = EXCLUDED.day_seqs, filled_at = now()
"""


def _runs_schema() -> pa.Schema:
    return pa.schema(
        [
            ("bucket", pa.int64()),
            ("metric", pa.string()),
            ("count", pa.int64()),
            ("sum", pa.float64()),
            ("min", pa.float64()),
            ("max", pa.float64()),
        ]
    )


@dataclass(frozen=True)
class CacheRead:
    """What the cache holds for a request: partial-aggregate runs of the hits (as
    rebucket.partials gives), and which (bucket, metric) pairs must be computed."""

    metrics: tuple[str, ...]  # the request's, in order: key = bucket * len(metrics) + index
    seqs: dict[tuple[int, int], int]  # (user, epoch day) -> change_seq, read first
    hit: np.ndarray  # bool per key
    hits: pa.Table  # runs of the hits holding rows (count > 0)

    @property
    def hit_count(self) -> int:
        return int(self.hit.sum())

    @property
    def miss_count(self) -> int:
        return len(self.hit) - self.hit_count

    def describe(self) -> dict[str, Any]:
        return {"hits": self.hit_count, "misses": self.miss_count}

    def missing_query(self, inner: DataQuery, table: BucketTable) -> DataQuery | None:
        """`inner` narrowed to the participants, metrics and UTC span of the misses (None:
        every pair is a hit). The tier stays: it is exact for every bucket."""
        missing = np.flatnonzero(~self.hit)
        if not len(missing):
            return None
        width = len(self.metrics)
        buckets = missing // width
        owners = table.attributes.column("user_id").to_numpy()[buckets]
        return replace(
            inner,
            users=tuple(sorted({int(u) for u in np.unique(owners)})),
            metrics=tuple(self.metrics[int(k)] for k in np.unique(missing % width)),
            start=from_us(int(table.starts[buckets].min())),
            end=from_us(int(table.ends[buckets].max())),
        )

    def keys(self, runs: pa.Table) -> np.ndarray:
        metric = pc.index_in(runs.column("metric"), value_set=pa.array(self.metrics))
        bucket = runs.column("bucket").to_numpy()
        return np.asarray(bucket * len(self.metrics) + metric.to_numpy(zero_copy_only=False))

    def only_missing(self, runs: pa.Table) -> pa.Table:
        """The runs of computed pairs that were misses (a hit's rows, read because they lay
        in the narrowed span, are dropped: the hit already counts them)."""
        if runs.num_rows == 0:
            return runs
        return runs.filter(pa.array(~self.hit[self.keys(runs)]))


def read(conn: psycopg.Connection, query: DataQuery, table: BucketTable) -> CacheRead:
    """The change numbers of the request's days, then the entries still equal to them."""
    metrics = query.metrics
    width = len(metrics)
    hit = np.zeros(table.count * width, dtype=bool)
    empty = CacheRead(metrics, {}, hit, _runs_schema().empty_table())
    if table.count == 0:
        return empty
    users = table.users
    first_day = int(table.starts.min()) // DAY_US
    last_day = (int(table.ends.max()) - 1) // DAY_US
    day = timedelta(days=1)
    seqs = {
        (int(u), int(d)): int(s)
        for u, d, s in conn.execute(
            _SEQS,
            {
                "users": list(users),
                "first": (EPOCH + first_day * day).date(),
                "last": (EPOCH + last_day * day).date(),
            },
        )
    }
    index = _bucket_index(table)
    bucket_keys, counts, sums, mins, maxs = [], [], [], [], []
    with conn.cursor(binary=True) as cursor:
        cursor.execute(
            _ENTRIES,
            {
                "users": list(users),
                "metrics": list(metrics),
                "first": from_us(int(table.starts.min())),
                "last": from_us(int(table.starts.max())),
            },
        )
        position = {name: k for k, name in enumerate(metrics)}
        for user_id, metric, start, end, count, total, low, high, day_seqs in cursor:
            start_us, end_us = to_us(start), to_us(end)
            bucket = index.get((user_id, start_us, end_us))
            if bucket is None:
                continue  # an interval this request does not ask (another zone's)
            days = range(start_us // DAY_US, (end_us - 1) // DAY_US + 1)
            if day_seqs != [seqs.get((user_id, d), 0) for d in days]:
                continue  # its rows changed since it was computed
            key = bucket * width + position[metric]
            hit[key] = True
            if count:
                bucket_keys.append(key)
                counts.append(count)
                sums.append(total)
                mins.append(low)
                maxs.append(high)
    keys = np.array(bucket_keys, dtype=np.int64)
    hits = pa.table(
        {
            "bucket": pa.array(keys // max(width, 1), pa.int64()),
            "metric": pa.array([metrics[k] for k in (keys % max(width, 1)).tolist()], pa.string()),
            "count": pa.array(counts, pa.int64()),
            "sum": pa.array(sums, pa.float64()),
            "min": pa.array(mins, pa.float64()),
            "max": pa.array(maxs, pa.float64()),
        },
        schema=_runs_schema(),
    )
    return CacheRead(metrics, seqs, hit, hits)


def _bucket_index(table: BucketTable) -> dict[tuple[int, int, int], int]:
    """(user, start µs, end µs) -> the bucket's index in `table`."""
    owners = table.attributes.column("user_id").to_numpy().tolist()
    return {
        key: i
        for i, key in enumerate(
            zip(owners, table.starts.tolist(), table.ends.tolist(), strict=True)
        )
    }


def fill(
    conn: psycopg.Connection, cached: CacheRead, table: BucketTable, computed: Sequence[pa.Table]
) -> int:
    """Store every missed pair (count 0 for those without rows) with the change numbers read
    before they were computed; the number of entries written."""
    missing = np.flatnonzero(~cached.hit)
    if not len(missing):
        return 0
    width = len(cached.metrics)
    count = np.zeros(len(cached.hit), dtype=np.int64)
    total = np.zeros(len(cached.hit), dtype=np.float64)
    low = np.full(len(cached.hit), np.nan)
    high = np.full(len(cached.hit), np.nan)
    runs = pa.concat_tables([_runs_schema().empty_table(), *computed]).combine_chunks()
    if runs.num_rows:
        # A bucket read partly from the lake and partly from the warm store has two runs.
        keys = cached.keys(runs)
        np.add.at(count, keys, runs.column("count").to_numpy())
        np.add.at(total, keys, runs.column("sum").to_numpy())
        np.fmin.at(low, keys, runs.column("min").to_numpy())
        np.fmax.at(high, keys, runs.column("max").to_numpy())
    owners = table.attributes.column("user_id").to_numpy()
    with conn.transaction():
        conn.execute(_STAGE)
        with conn.cursor().copy("COPY stratum_calendar_fill FROM STDIN") as copy:
            for key in missing.tolist():
                bucket, metric = divmod(key, width)
                user_id = int(owners[bucket])
                start_us, end_us = int(table.starts[bucket]), int(table.ends[bucket])
                days = range(start_us // DAY_US, (end_us - 1) // DAY_US + 1)
                filled = bool(count[key])
                copy.write_row(
                    (
                        user_id,
                        cached.metrics[metric],
                        from_us(start_us),
                        from_us(end_us),
                        int(count[key]),
                        float(total[key]),
                        float(low[key]) if filled else None,
                        float(high[key]) if filled else None,
                        [cached.seqs.get((user_id, d), 0) for d in days],
                    )
                )
        conn.execute(_UPSERT)
    return len(missing)
