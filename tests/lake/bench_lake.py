"""Timings of the lake's hot paths (not a test: run ``python -m tests.lake.bench_lake``).

Prints replace_days for 64 raw user-days at 1 Hz (86,400 rows each), day_stats for them, and
files() cold/warm/after-a-commit on a table of 3,650 partitions built in 73 commits.
"""

from __future__ import annotations

import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
from deltalake import WriterProperties, write_deltalake

from lake import Lake, day_checksums
from lake.layout import data_schema
from tests.lake.builders import ALL_TIME, tier_rows

JAN1 = date(2024, 1, 1)


def one_hz(pairs: list[tuple[int, date]], metrics: int = 1, seed: int = 0) -> pa.Table:
    """86,400 rows per user-day split over ``metrics`` metrics, in (user, date, ts) order."""
    per_metric = 86_400 // metrics
    step = 1_000_000 * metrics
    tables = []
    for user_id, day in pairs:
        start = np.datetime64(day.isoformat(), "us").astype(np.int64)
        ts = np.concatenate(
            [start + i * 1_000_000 + np.arange(per_metric) * step for i in range(metrics)]
        )
        order = np.argsort(ts, kind="stable")  # metrics interleaved, as ORDER BY ts gives them
        names = np.repeat(np.array([f"m{i}" for i in range(metrics)], dtype=object), per_metric)
        rng = np.random.default_rng([seed, user_id, day.toordinal()])
        tables.append(
            pa.table(
                {
                    "user_id": pa.array(np.full(86_400, user_id, np.int32)),
                    "date": pa.array([day] * 86_400, pa.date32()),
                    "metric": pa.array(names[order], pa.string()),
                    "ts": pa.array(ts[order], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                    "value": pa.array(np.round(rng.normal(70, 10, 86_400))),
                },
                schema=data_schema("raw"),
            )
        )
    return pa.concat_tables(tables)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_replace(root: Path) -> None:
    lake = Lake(root)
    pairs = [(u, JAN1 + timedelta(days=d)) for u in range(1, 9) for d in range(8)]
    for metrics in (1, 4):
        data = one_hz(pairs, metrics)
        replace = functools.partial(lake.replace_days, "raw", data, pairs)
        first = timed(replace)
        again = [timed(replace) for _ in range(3)]
        print(
            f"replace_days 64 user-days x 86,400 rows ({metrics} metric(s) interleaved,"
            f" {data.num_rows:,} rows): first {first:.2f} s,"
            f" replacing {min(again):.2f}-{max(again):.2f} s"
        )
    stats = timed(lambda: lake.day_stats("raw", pairs))
    source = timed(lambda: day_checksums("raw", data))
    print(f"day_stats 64 user-days: {stats:.2f} s; day_checksums of the source: {source:.2f} s")
    print(f"raw bytes: {lake.total_bytes('raw') / 1e6:.1f} MB for {data.num_rows:,} rows")

    # For comparison: delta-rs' own predicate overwrite of the same partitions.
    table_dir = root / "delta_rs_predicate"
    properties = WriterProperties(compression="ZSTD", max_row_group_size=65_536)
    write_deltalake(table_dir, data, partition_by=["user_id", "date"], writer_properties=properties)
    predicate = " OR ".join(f"(user_id = {u} AND date = '{d}')" for u, d in pairs)
    took = timed(
        lambda: write_deltalake(
            table_dir, data, mode="overwrite", predicate=predicate, writer_properties=properties
        )
    )
    print(
        f"(delta-rs write_deltalake overwrite+predicate, same data: {took:.2f} s, unsorted files)"
    )


def bench_files(root: Path) -> None:
    lake = Lake(root)
    users, days = range(1, 11), [JAN1 + timedelta(days=d) for d in range(365)]
    for chunk in range(0, 365, 5):
        pairs = [(u, d) for u in users for d in days[chunk : chunk + 5]]
        lake.replace_days(
            "agg_1m", tier_rows("agg_1m", pairs, metrics=("hr",), step_seconds=3600), pairs
        )
    fresh = Lake(root)
    start, end = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 8, tzinfo=UTC)
    cold = timed(lambda: fresh.files("agg_1m", [3, 4], start, end))
    warm = [timed(lambda: fresh.files("agg_1m", [3, 4], start, end)) for _ in range(200)]
    everything = [timed(lambda: fresh.files("agg_1m", None, *ALL_TIME)) for _ in range(50)]
    listed = fresh.files("agg_1m", None, *ALL_TIME)
    print(
        f"files() on {len(listed.files):,} files, version {listed.version}:"
        f" cold {cold * 1e3:.1f} ms;"
        f" warm median {statistics.median(warm) * 1e3:.3f} ms (2 users x 7 days),"
        f" all files median {statistics.median(everything) * 1e3:.3f} ms"
    )
    pairs = [(1, JAN1)]
    lake.replace_days("agg_1m", tier_rows("agg_1m", pairs, seed=5), pairs)
    refresh = timed(lambda: fresh.files("agg_1m", [3, 4], start, end))
    pinned = timed(lambda: fresh.files("agg_1m", None, *ALL_TIME, version=40))
    print(
        f"files() after one new commit (incremental refresh) {refresh * 1e3:.1f} ms;"
        f" pinned older version (not cached) {pinned * 1e3:.1f} ms"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if "files" not in sys.argv[1:]:
            bench_replace(Path(tmp) / "replace")
        if "replace" not in sys.argv[1:]:
            bench_files(Path(tmp) / "files")


if __name__ == "__main__":
    main()
