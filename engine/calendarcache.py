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
# The entries over the request's span, by a range of the primary key, whose start is one of
# the request's bucket starts. Whatever the row estimates, the plan stays an index range or
# a whole scan with a hashed lookup of the starts (a join to the request's intervals,
# planned on stale estimates just after a prefill, was once a nested loop of whole scans:
# 2.7 s). The starts exclude the other zones' days the cache holds over the same span (a
# year prefilled in four zones: 3,660 rows read, not 11,247; 15-20 ms, not 50-200); they
# are sent as values each time (prepare=False) so that the lookup is hashed. `read` keeps
# the request's intervals (the ends too), and of those the entries whose day_seqs (the
# change number of each UTC day the interval touches: the date of its start + n; 0: no
# day_state row) equal the days' numbers, read first.
_ENTRIES = """
SELECT user_id, metric, (extract(epoch FROM start_ts) * 1000000)::bigint,
    (extract(epoch FROM end_ts) * 1000000)::bigint, count, sum, min, max, day_seqs
FROM calendar_cache
WHERE user_id = ANY(%(users)s) AND metric = ANY(%(metrics)s)
AND start_ts BETWEEN %(first)s AND %(last)s AND start_ts = ANY(%(starts)s)
ORDER BY user_id, start_ts
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
    rows = conn.execute(
        _ENTRIES,
        {
            "users": list(table.users),
            "metrics": list(metrics),
            "first": from_us(int(table.starts.min())),
            "last": from_us(int(table.starts.max())),
            "starts": [from_us(start) for start in np.unique(table.starts).tolist()],
        },
        prepare=False,
    ).fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [()] * 9
    users = np.array(columns[0], dtype=np.int64)
    starts = np.array(columns[2], dtype=np.int64)
    buckets = _buckets_of(table, users, starts, np.array(columns[3], dtype=np.int64))
    first_days = (starts // DAY_US).tolist()
    # Another zone's interval (bucket -1) is not checked: it is not this request's.
    used = np.array(
        [
            bucket >= 0
            and all(seqs.get((user_id, first_day + n), 0) == seq for n, seq in enumerate(day_seqs))
            for bucket, user_id, first_day, day_seqs in zip(
                buckets.tolist(), users.tolist(), first_days, columns[8], strict=True
            )
        ],
        dtype=bool,
    )
    names = pa.array(columns[1], pa.string())
    position = pc.index_in(names, value_set=pa.array(metrics)).to_numpy(zero_copy_only=False)
    hit[buckets[used] * width + position[used]] = True
    counts = np.array(columns[4], dtype=np.int64)
    held = used & (counts > 0)
    hits = pa.table(
        {
            "bucket": pa.array(buckets[held], pa.int64()),
            "metric": names.filter(pa.array(held)),
            "count": pa.array(counts[held], pa.int64()),
            "sum": pa.array(np.array(columns[5], dtype=np.float64)[held]),
            "min": pa.array(np.array(columns[6], dtype=np.float64)[held]),
            "max": pa.array(np.array(columns[7], dtype=np.float64)[held]),
        },
        schema=_runs_schema(),
    )
    return CacheRead(metrics, seqs, hit, hits)


def _buckets_of(
    table: BucketTable, users: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """Each interval's bucket index in `table` (-1: not one of its buckets). The intervals
    come sorted by user; a participant's buckets are disjoint and sorted by start."""
    out = np.full(len(users), -1, dtype=np.int64)
    if not len(users):
        return out
    owners, firsts = np.unique(users, return_index=True)
    for user_id, lo, hi in zip(
        owners.tolist(), firsts.tolist(), [*firsts[1:].tolist(), len(users)], strict=True
    ):
        first, own_starts, own_ends = table.of(user_id)
        if not len(own_starts):
            continue
        at = np.searchsorted(own_starts, starts[lo:hi]).clip(0, len(own_starts) - 1)
        same = (own_starts[at] == starts[lo:hi]) & (own_ends[at] == ends[lo:hi])
        out[lo:hi] = np.where(same, at + first, -1)
    return out


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
