"""Exact rollups (`stratum aggregate`): data_1m from raw, data_1h from 1m, data_1d from 1h.

Only (user, UTC day) windows whose change number moved since their last refresh are rebuilt:
each window is deleted and recomputed whole, in one transaction per batch, so a refresh is
idempotent and a crash leaves the previous rollups. Buckets are aligned to UTC.

A write that commits while a batch runs either is included or leaves its day pending: the
batch records the change number it read at its start, never "done" (see 001_foundation.sql).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import psycopg

from engine.tiers import RAW, TIERS, WARM_TABLES, Tier
from sync import timescale

log = logging.getLogger(__name__)

# Serialises refreshes: two refreshes of one window would both insert its buckets.
REFRESH_LOCK = 0x524F4C4C5550  # "ROLLUP"

# One window per (user, day, metric): with the metric bound, every lookup is a tight range
# of the (user_id, metric, ts) primary key instead of a scan of the user's whole history.
_PENDING = """
CREATE TEMPORARY TABLE refresh_window ON COMMIT DROP AS
SELECT d.user_id, d.day, d.change_seq, m.name AS metric,
       (d.day::timestamp AT TIME ZONE 'UTC') AS lo,
       ((d.day + 1)::timestamp AT TIME ZONE 'UTC') AS hi
FROM (
    SELECT user_id, day, change_seq FROM day_state
    WHERE change_seq > refreshed_seq
    ORDER BY day, user_id
    LIMIT %s
) AS d
CROSS JOIN metrics AS m
"""

_IN_WINDOW = "s.user_id = w.user_id AND s.metric = w.metric AND s.ts >= w.lo AND s.ts < w.hi"

# One day of the batch at a time: bounds on ts that the planner sees as constants let
# TimescaleDB scan only that day's chunk. Joined to the windows by parameters alone, every
# window probed every chunk of the hypertable (30 per window for a 30-day warm store).
_DAY = "w.day = %(day)s AND s.ts >= %(lo)s AND s.ts < %(hi)s"

_DAY_COUNTS = f"""
INSERT INTO day_counts (user_id, metric, day, rows_raw, rows_1m, rows_1h)
SELECT w.user_id, w.metric, w.day, d.count,
       (SELECT count(*) FROM data_1m s WHERE {_IN_WINDOW} AND {_DAY}),
       (SELECT count(*) FROM data_1h s WHERE {_IN_WINDOW} AND {_DAY})
FROM refresh_window w
JOIN data_1d d ON d.user_id = w.user_id AND d.metric = w.metric AND d.ts = w.lo
WHERE w.day = %(day)s
"""  # noqa: S608 (constants only)


def _step(finer: Tier, coarser: Tier) -> tuple[str, str]:
    """(target, the statement filling one day of it from `finer`'s rows `s`)."""
    bucket = f"date_trunc('{coarser.bucket_unit}', s.ts), s.user_id, s.metric"
    if finer is RAW:
        measures = "count(*), sum(s.value), min(s.value), max(s.value)"
    else:
        measures = "sum(s.count), sum(s.sum), min(s.min), max(s.max)"
    return coarser.warm_table, (
        f"INSERT INTO {coarser.warm_table} (ts, user_id, metric, count, sum, min, max) "  # noqa: S608
        f"SELECT {bucket}, {measures} FROM {finer.warm_table} s JOIN refresh_window w "
        f"ON {_IN_WINDOW} WHERE {_DAY} "
        # Key order: index insertions then walk the primary key instead of jumping.
        "GROUP BY 1, 2, 3 ORDER BY 2, 3, 1"
    )


# Each tier from the next finer one (1m from raw, 1h from 1m, 1d from 1h): exact, as every
# rollup keeps count, sum, min and max. Tables and units are the tier table's constants.
# A day's buckets of every tier lie inside that UTC day, so each day refreshes on its own.
_STEPS = tuple(_step(finer, coarser) for finer, coarser in pairwise(TIERS.values()))


@dataclass(frozen=True)
class RefreshResult:
    days: int
    rows: dict[str, int]  # rows written per rollup table
    seconds: float


def pending_refresh_days(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM day_state WHERE change_seq > refreshed_seq").fetchone()
    return int(row[0]) if row else 0


def warm_tier_counts(url: str) -> dict[str, int]:
    """Rows in raw_data and each rollup table, and user-days waiting for a refresh."""
    with psycopg.connect(url) as conn:
        counts = {}
        for table in WARM_TABLES:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
            counts[table] = int(row[0]) if row else 0
        counts["pending refresh (user-days)"] = pending_refresh_days(conn)
        return counts


def refresh_rollups(url: str, batch_days: int = 256) -> RefreshResult:
    """Refresh every pending (user, day) window, `batch_days` windows per transaction."""
    started = time.perf_counter()
    days = 0
    rows = {target: 0 for target, _ in _STEPS}
    with psycopg.connect(url) as conn:
        while True:
            done, written = _refresh_batch(conn, batch_days)
            if not done:
                break
            days += done
            for target, count in written.items():
                rows[target] += count
    return RefreshResult(days, rows, time.perf_counter() - started)


def _refresh_batch(conn: psycopg.Connection, batch_days: int) -> tuple[int, dict[str, int]]:
    with conn.transaction():
        conn.execute("SET LOCAL timezone = 'UTC'")  # date_trunc buckets in UTC
        # Every join here is a few hundred windows against big tables: one primary-key range
        # scan per window is right, but the planner misjudges range joins and would sort or
        # hash whole tables. Memoize only adds overhead, JIT compiles for longer than short
        # batches run, and the aggregate's hash table must not spill.
        conn.execute("SET LOCAL enable_mergejoin = off")
        conn.execute("SET LOCAL enable_hashjoin = off")
        conn.execute("SET LOCAL jit = off")
        conn.execute("SET LOCAL enable_memoize = off")
        conn.execute("SET LOCAL work_mem = '256MB'")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (REFRESH_LOCK,))
        conn.execute(_PENDING, (batch_days,))
        conn.execute("ANALYZE refresh_window")
        count = conn.execute("SELECT count(DISTINCT (user_id, day)) FROM refresh_window").fetchone()
        if not count or not count[0]:
            return 0, {}
        conn.execute(timescale.ALLOW_COLUMNSTORE_WRITES)
        for target, _ in _STEPS:
            _delete_windows(conn, target)
        conn.execute(
            "DELETE FROM day_counts c USING refresh_window w "
            "WHERE c.user_id = w.user_id AND c.metric = w.metric AND c.day = w.day"
        )
        t0 = time.perf_counter()
        written = {target: 0 for target, _ in _STEPS}
        for (day,) in conn.execute("SELECT DISTINCT day FROM refresh_window ORDER BY 1").fetchall():
            lo = datetime.combine(day, datetime.min.time(), UTC)
            bounds = {"day": day, "lo": lo, "hi": lo + timedelta(days=1)}
            # Unprepared: each statement is planned with its day's bounds as constants.
            for target, insert in _STEPS:
                written[target] += conn.execute(insert.encode(), bounds, prepare=False).rowcount
            conn.execute(_DAY_COUNTS.encode(), bounds, prepare=False)
        log.debug("refresh: %s rows in %.2fs", written, time.perf_counter() - t0)
        conn.execute("SELECT nextval('catalog_seq')")  # the router's coverage changed
        conn.execute(
            "UPDATE day_state d SET refreshed_seq = w.change_seq FROM refresh_window w "
            "WHERE d.user_id = w.user_id AND d.day = w.day AND d.refreshed_seq < w.change_seq"
        )
        return int(count[0]), written


def _delete_windows(conn: psycopg.Connection, target: str) -> None:
    """Delete the buckets of every refresh window from `target`.

    A hypertable's compressed chunks decompress what a DELETE's conditions select: one
    statement joined to refresh_window, or one with bound parameters under a generic plan,
    gives TimescaleDB no constants to select batches by, and it decompresses every batch of
    every compressed chunk. So hypertables get one statement per window, sent unprepared
    (each planned with its own values) in one pipeline; plain tables, one join."""
    if target not in timescale.HYPERTABLES:
        conn.execute(f"DELETE FROM {target} s USING refresh_window w WHERE {_IN_WINDOW}")  # noqa: S608
        return
    windows = conn.execute("SELECT user_id, metric, lo, hi FROM refresh_window").fetchall()
    delete = (
        f"DELETE FROM {target} WHERE user_id = %s AND metric = %s "  # noqa: S608
        "AND ts >= %s AND ts < %s"
    ).encode()
    with conn.pipeline(), conn.cursor() as cur:
        for window in windows:
            cur.execute(delete, window, prepare=False)
