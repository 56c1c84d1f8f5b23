"""What the fine tiers' file layout costs (issue 12 point 3, issue 13.0): not a test, never
asserted.

    python -m benchmarks.lake_files ROOT [--users 50] [--days 730] [--per-day 1440]

Builds, in the empty folder ROOT, a raw tier of USERS x DAYS participant-days of one metric
at one sample a minute, one file per participant-day (what the nightly sync leaves, and what
every lake held before issue 12), then compacts it to one file per participant-month, and
prints for both states: files, bytes per row, opening the tier cold for a one-participant
query (delta-rs, the Snapshot, that participant's index; then every participant's index, which
only maintenance needs), and DuckDB over one participant-year; then the cost of one late day into a
compacted month (replace_days rewrites that participant-month).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from lake import Lake, in_utc, scan_sql
from lake.layout import data_schema
from lake.snapshot import Snapshot

FIRST = date(2024, 1, 1)
PER_DAY = 1440  # one sample a minute
_ALL = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def day_rows(users: range, days: list[date], seed: int = 0, per_day: int = PER_DAY) -> pa.Table:
    """``per_day`` heart-rate-like rows (one a minute by default) for each user-day (values
    with one decimal)."""
    rng = np.random.default_rng(seed)
    n = len(users) * len(days)
    starts = np.array(
        [np.datetime64(d.isoformat(), "us").astype(np.int64) for _ in users for d in days]
    )
    ts = (starts[:, None] + np.arange(per_day) * 60_000_000).ravel()
    user = np.repeat(np.array([u for u in users for _ in days], np.int32), per_day)
    day = np.repeat(
        np.array([np.datetime64(d.isoformat(), "D") for _ in users for d in days]), per_day
    )
    values = np.round(rng.normal(70, 8, n * per_day), 1)
    schema = data_schema("raw")
    return pa.Table.from_arrays(
        [
            pa.array(user),
            pa.array(day).cast(pa.date32()),
            pa.array(np.full(n * per_day, "heart_rate", dtype=object), pa.string()),
            pa.array(ts, pa.int64()).cast(schema.field("ts").type),
            pa.array(values),
        ],
        schema=schema,
    )


def median_time(action: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@dataclass(frozen=True)
class Opening:
    """Seconds of opening the raw tier cold, by step (the request path stops at ``user``)."""

    delta: float  # delta-rs opening the table and listing its add actions
    snapshot: float  # the Snapshot made of that list (columns grouped by user)
    user: float  # indexing one participant's files (what a one-participant query adds)
    everything: float  # indexing every participant's files (maintenance: verify, compact)
    files: int

    @property
    def cold(self) -> float:
        return self.delta + self.snapshot + self.user


def open_cold(root: Path) -> Opening:
    started = time.perf_counter()
    table = DeltaTable(str(root / "raw"))
    actions = pa.table(table.get_add_actions(flatten=True))
    opened = time.perf_counter()
    snapshot = Snapshot.from_add_actions("raw", table.version(), str(root / "raw"), actions)
    made = time.perf_counter()
    snapshot.select([1], date.min, date.max)
    one = time.perf_counter()
    files = len(snapshot.files)
    return Opening(opened - started, made - opened, one - made, time.perf_counter() - one, files)


def best_open(root: Path) -> Opening:
    return min((open_cold(root) for _ in range(5)), key=lambda o: o.cold)


def state(root: Path, label: str, users: int, days: int, per_day: int) -> None:
    lake = Lake(root)
    opening = best_open(root)
    version = DeltaTable(str(root / "raw")).version()
    if not (root / "raw" / "_delta_log" / f"{version:020d}.checkpoint.parquet").exists():
        print(f"{label}: open cold from the JSON commits {opening.cold * 1000:.0f} ms")
        DeltaTable(str(root / "raw")).create_checkpoint()
        opening = best_open(root)
    rows = users * days * per_day
    year = lake.files(
        "raw", [1], datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)
    )
    sql, params = scan_sql(year)
    with in_utc(duckdb.connect()) as conn:
        query = f"SELECT count(*), avg(value) FROM {sql} WHERE metric = 'heart_rate'"  # noqa: S608
        scan = median_time(lambda: conn.execute(query, params).fetchall())
        # The columns the limit file holds: compare layouts, not projections.
        fetch = f"SELECT metric, ts, value FROM {sql} WHERE metric = 'heart_rate'"  # noqa: S608
        arrow = median_time(lambda: conn.sql(fetch, params=params).to_arrow_table())
    print(
        f"{label}: {opening.files:,} files, {lake.total_bytes('raw') / rows:.2f} bytes/row; "
        f"open cold for one participant {opening.cold * 1000:.0f} ms (delta-rs "
        f"{opening.delta * 1000:.0f} ms + snapshot {opening.snapshot * 1000:.1f} ms + the "
        f"participant's index {opening.user * 1000:.1f} ms; every participant's index "
        f"{opening.everything * 1000:.0f} ms more); participant-year ({len(year.files)} files, "
        f"{year.rows:,} rows): DuckDB count+avg {scan * 1000:.1f} ms, to Arrow "
        f"{arrow * 1000:.1f} ms"
    )


def limit(root: Path) -> None:
    """The same participant-year in one file sorted by (metric, ts), 128k-row groups: the
    bench's "limit" layout (benchmarks/limit.py), what a scan of these rows costs at best."""
    lake = Lake(root)
    year = lake.files(
        "raw", [1], datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)
    )
    sql, params = scan_sql(year)
    path = root / "limit-user-1-2024.parquet"
    with in_utc(duckdb.connect()) as conn:
        rows = conn.sql(
            f"SELECT metric, ts, value FROM {sql} WHERE ts < '2025-01-01' ORDER BY metric, ts",  # noqa: S608
            params=params,
        ).to_arrow_table()
        pq.write_table(rows, path, row_group_size=131_072, compression="zstd", compression_level=3)
        scan = median_time(
            lambda: conn.execute(
                "SELECT count(*), avg(value) FROM read_parquet($p) WHERE metric = 'heart_rate'",
                {"p": str(path)},
            ).fetchall()
        )
        arrow = median_time(
            lambda: conn.sql(
                "SELECT * FROM read_parquet($p) WHERE metric = 'heart_rate'",
                params={"p": str(path)},
            ).to_arrow_table()
        )
    print(
        f"limit (one sorted file, {rows.num_rows:,} rows): DuckDB count+avg {scan * 1000:.1f} ms, "
        f"to Arrow {arrow * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--days", type=int, default=730)
    # Fewer rows build quicker; what opening the tier costs depends on its files only.
    parser.add_argument("--per-day", type=int, default=PER_DAY, help="rows per participant-day")
    args = parser.parse_args()
    lake = Lake(args.root)
    users = range(1, args.users + 1)
    days = [FIRST + timedelta(days=n) for n in range(args.days)]
    started = time.perf_counter()
    # Every other day per commit: one file per participant-day, as day-by-day syncs leave.
    for chunk in range(0, len(days), 62):
        for parity in (0, 1):
            some = days[chunk : chunk + 62][parity::2]
            lake.replace_days(
                "raw",
                day_rows(users, some, chunk + parity, args.per_day),
                [(u, d) for u in users for d in some],
            )
    built = time.perf_counter() - started
    rows = args.users * args.days * args.per_day
    print(
        f"wrote {args.users * args.days:,} participant-day files in {built:.0f} s "
        f"({rows / built:,.0f} rows/s)"
    )
    state(args.root, "one file per participant-day", args.users, args.days, args.per_day)
    started = time.perf_counter()
    result = lake.compact("raw")
    compacted = time.perf_counter() - started
    print(
        f"compacted {result.files_removed:,} files into {result.files_added:,} in "
        f"{compacted:.0f} s ({rows / compacted:,.0f} rows/s)"
    )
    state(args.root, "one file per participant-month", args.users, args.days, args.per_day)
    limit(args.root)
    late_day = days[len(days) // 2]
    started = time.perf_counter()
    late = day_rows(range(1, 2), [late_day], 99, args.per_day)
    lake.replace_days("raw", late, [(1, late_day)])
    print(
        f"one late day into a compacted month ({late_day}): replace_days "
        f"{(time.perf_counter() - started) * 1000:.0f} ms (that participant-month rewritten)"
    )


if __name__ == "__main__":
    main()
