"""Calendar buckets computed once: the warm store's calendar_cache (sync/migrations/010).

A bucket is an exact UTC interval of one participant and metric, so its count, sum, min and
max are a function of the rows inside it, whatever zone asked for it: a zone-history edit
only changes which intervals are asked (they miss). What can change an entry's value is a
write to the rows, and every such write gives the UTC days it touches a fresh
day_state.change_seq. So:

1. `read` reads the change numbers of the request's days, then the entries of the
   request's intervals, and takes those whose stored numbers equal them (`hits`). (An entry
   filled after the numbers were read carries newer ones: a miss, computed again.)
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

from engine.query import EPOCH, DataQuery, from_us
from engine.rebucket import BucketTable

DAY_US = 86_400_000_000

_SEQS = """
SELECT user_id, day - DATE '1970-01-01', change_seq FROM day_state
WHERE user_id = ANY(%(users)s) AND day BETWEEN %(first)s AND %(last)s
"""
# The request's intervals, each with its bucket index, joined to their entries by the primary
# key: only the intervals asked are read (the cache also holds other zones' days over the same
# span, which a range scan would read too). An entry is used only while each day it touches
# (its n-th: the UTC date of its start + n) has the change number it was stored with (0: no
# day_state row): `read` checks day_seqs against the days' numbers, read first.
_ENTRIES = """
SELECT b.i - 1, c.metric, c.count, c.sum, c.min, c.max, c.day_seqs
FROM unnest(%(users)s::text::int[], %(starts)s::text::bigint[], %(ends)s::text::bigint[])
    WITH ORDINALITY AS b(user_id, s, e, i)
JOIN calendar_cache c ON c.user_id = b.user_id
    AND c.start_ts = timestamptz 'epoch' + b.s * interval '1 microsecond'
    AND c.end_ts = timestamptz 'epoch' + b.e * interval '1 microsecond'
WHERE c.metric = ANY(%(metrics)s)
-- Bounds the scan to the request's span in the primary key, whichever join is chosen.
AND c.user_id = ANY(%(user_ids)s) AND c.start_ts BETWEEN %(first)s AND %(last)s
"""
# Intervals travel as µs since the epoch (exact); NaN stands for the NULL min/max of an
# empty interval; day_seqs as array text (their lengths differ). Each column is one array
# literal (numbers and registry metric names only): dumping 3,660-element lists value by
# value cost half of a year's fill.
_UPSERT = """
INSERT INTO calendar_cache (user_id, metric, start_ts, end_ts, count, sum, min, max, day_seqs,
    prefilled)
SELECT u, m, timestamptz 'epoch' + s * interval '1 microsecond',
    timestamptz 'epoch' + e * interval '1 microsecond', c, t,
    nullif(lo, 'NaN'), nullif(hi, 'NaN'), d::bigint[], %(prefilled)s
FROM unnest(%(users)s::text::int[], %(metrics)s::text::text[], %(starts)s::text::bigint[],
    %(ends)s::text::bigint[], %(counts)s::text::bigint[], %(sums)s::text::float8[],
    %(mins)s::text::float8[], %(maxs)s::text::float8[], %(day_seqs)s::text::text[])
    AS x(u, m, s, e, c, t, lo, hi, d)
ON CONFLICT (user_id, metric, start_ts, end_ts) DO UPDATE
SET count = EXCLUDED.count, sum = EXCLUDED.sum, min = EXCLUDED.min, max = EXCLUDED.max,
    day_seqs = EXCLUDED.day_seqs, filled_at = now(),
    prefilled = calendar_cache.prefilled OR EXCLUDED.prefilled
"""


def _literal(values: list[Any]) -> str:
    """A PostgreSQL array literal of numbers or registry names (no quoting needed)."""
    return "{" + ",".join(map(str, values)) + "}"


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
    seqs: dict[tuple[int, int], int]  # (user, epoch day) -> change_seq, read before the misses
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
    """The change numbers of the request's days (a fill of its misses is stored with them),
    then the entries of its intervals still equal to them."""
    metrics = query.metrics
    width = len(metrics)
    hit = np.zeros(table.count * width, dtype=bool)
    if table.count == 0:
        return CacheRead(metrics, {}, hit, _runs_schema().empty_table())
    seqs = _day_seqs(conn, table)
    owners = table.attributes.column("user_id").to_numpy()
    rows = conn.execute(
        _ENTRIES,
        {
            "users": _literal(owners.tolist()),
            "starts": _literal(table.starts.tolist()),
            "ends": _literal(table.ends.tolist()),
            "metrics": list(metrics),
            "user_ids": list(table.users),
            "first": from_us(int(table.starts.min())),
            "last": from_us(int(table.starts.max())),
        },
    ).fetchall()
    first_days = (table.starts // DAY_US).tolist()
    users = owners.tolist()
    current = [
        all(
            seqs.get((users[bucket], first_days[bucket] + n), 0) == seq
            for n, seq in enumerate(day_seqs)
        )
        for bucket, _, _, _, _, _, day_seqs in rows
    ]
    columns = list(zip(*rows, strict=True)) if rows else [()] * 7
    buckets = np.array(columns[0], dtype=np.int64)
    names = pa.array(columns[1], pa.string())
    position = pc.index_in(names, value_set=pa.array(metrics)).to_numpy(zero_copy_only=False)
    used = np.array(current, dtype=bool)
    hit[buckets[used] * width + position[used]] = True
    counts = np.array(columns[2], dtype=np.int64)
    held = used & (counts > 0)
    hits = pa.table(
        {
            "bucket": pa.array(buckets[held], pa.int64()),
            "metric": names.filter(pa.array(held)),
            "count": pa.array(counts[held], pa.int64()),
            "sum": pa.array(np.array(columns[3], dtype=np.float64)[held]),
            "min": pa.array(np.array(columns[4], dtype=np.float64)[held]),
            "max": pa.array(np.array(columns[5], dtype=np.float64)[held]),
        },
        schema=_runs_schema(),
    )
    return CacheRead(metrics, seqs, hit, hits)


def _day_seqs(conn: psycopg.Connection, table: BucketTable) -> dict[tuple[int, int], int]:
    """(user, epoch day) -> change_seq of the days the request's buckets touch."""
    day = timedelta(days=1)
    first_day = int(table.starts.min()) // DAY_US
    last_day = (int(table.ends.max()) - 1) // DAY_US
    rows = conn.execute(
        _SEQS,
        {
            "users": list(table.users),
            "first": (EPOCH + first_day * day).date(),
            "last": (EPOCH + last_day * day).date(),
        },
    ).fetchall()
    return {(int(u), int(d)): int(s) for u, d, s in rows}


def fill(
    conn: psycopg.Connection,
    cached: CacheRead,
    table: BucketTable,
    computed: Sequence[pa.Table],
    prefilled: bool = False,
) -> int:
    """Store every missed pair (count 0 for those without rows) with the change numbers read
    before they were computed; the number of entries written. `prefilled`: by the nightly
    prefill, whose entries pruning keeps longest (an entry once prefilled stays so)."""
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
    buckets, metric = np.divmod(missing, width)
    owners = table.attributes.column("user_id").to_numpy()[buckets]
    starts, ends = table.starts[buckets], table.ends[buckets]
    seqs = cached.seqs
    day_seqs = [
        "{" + ",".join(str(seqs.get((user_id, d), 0)) for d in range(lo, hi + 1)) + "}"
        for user_id, lo, hi in zip(
            owners.tolist(),
            (starts // DAY_US).tolist(),
            ((ends - 1) // DAY_US).tolist(),
            strict=True,
        )
    ]
    filled = count[missing] > 0
    conn.execute(
        _UPSERT,
        {
            "users": _literal(owners.tolist()),
            "metrics": _literal([cached.metrics[k] for k in metric.tolist()]),
            "starts": _literal(starts.tolist()),
            "ends": _literal(ends.tolist()),
            "counts": _literal(count[missing].tolist()),
            "sums": _literal(total[missing].tolist()),
            "mins": _literal(np.where(filled, low[missing], np.nan).tolist()),
            "maxs": _literal(np.where(filled, high[missing], np.nan).tolist()),
            "day_seqs": "{" + ",".join(f'"{seqs}"' for seqs in day_seqs) + "}",
            "prefilled": prefilled,
        },
    )
    return len(missing)
