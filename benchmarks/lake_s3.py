"""The lake on S3 against the lake on a folder: one run, same data, same operations, ratio.

    python -m benchmarks.lake_s3                # a local moto server (needs the dev extra)
    python -m benchmarks.lake_s3 --root s3://bucket/prefix   # a real store, AWS_* variables

Measures what the engine and the jobs do with the lake: commits (sync's replace_days), the
planner's file listing, the executor's DuckDB scans (one user-day raw, one user-week raw, the
cohort's days at 1m), the first-read integrity check (size + SHA-256 of every file of a
plan), and vacuum. No PostgreSQL: the data is generated straight into the tiers. moto is a
single Python process on 127.0.0.1; a real object store has more latency per request and
more bandwidth, so read the S3 figures as the cost of the protocol path, not of a provider.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from lake import Lake, LakeFiles, lake_scan
from lake.integrity import check_file

FIRST_DAY = date(2024, 1, 1)
METRICS = ("heart_rate", "steps")


def raw_rows(users: int, days: int) -> pa.Table:
    """1 Hz rows of each metric for every user-day."""
    seconds = np.arange(86_400, dtype=np.int64) * 1_000_000
    parts = []
    rng = np.random.default_rng(7)
    for user_id in range(1, users + 1):
        for offset in range(days):
            day = FIRST_DAY + timedelta(days=offset)
            midnight = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 10**6
            for metric in METRICS:
                parts.append(
                    pa.table(
                        {
                            "user_id": pa.array(np.full(86_400, user_id), pa.int32()),
                            "date": pa.array([day] * 86_400, pa.date32()),
                            "metric": pa.array([metric] * 86_400),
                            "ts": pa.array(midnight + seconds).cast(pa.timestamp("us", tz="UTC")),
                            "value": pa.array(rng.normal(70, 10, 86_400)),
                        }
                    )
                )
    return pa.concat_tables(parts)


def minute_rows(raw: pa.Table) -> pa.Table:
    with duckdb.connect() as conn:
        conn.register("raw", raw)
        return conn.sql(
            "SELECT user_id, date, metric, time_bucket(INTERVAL 1 minute, ts) AS ts, "
            "count(*)::BIGINT AS count, sum(value) AS sum, min(value) AS min, max(value) AS max "
            "FROM raw GROUP BY ALL ORDER BY ALL"
        ).to_arrow_table()


def _timed(action: Callable[[], object], repeat: int = 1) -> float:
    """Median seconds of `repeat` runs."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def _scan(lake: Lake, files: LakeFiles, metric: str) -> int:
    with duckdb.connect() as conn, lake_scan(conn, files, lake.storage) as (sql, params):
        found = conn.execute(
            f"SELECT count(*), avg(value) FROM {sql} AS lake WHERE metric = $metric",  # noqa: S608
            {**params, "metric": metric},
        ).fetchone()
    return int(found[0]) if found else 0


def _scan_1m(lake: Lake, files: LakeFiles) -> int:
    with duckdb.connect() as conn, lake_scan(conn, files, lake.storage) as (sql, params):
        found = conn.execute(
            f"SELECT count(*), sum(sum) / sum(count) FROM {sql} AS lake",  # noqa: S608
            params or None,
        ).fetchone()
    return int(found[0]) if found else 0


def measure(lake: Lake, raw: pa.Table, minutes: pa.Table, users: int, days: int) -> dict[str, Any]:
    pairs = [(u, FIRST_DAY + timedelta(days=d)) for u in range(1, users + 1) for d in range(days)]
    start = datetime(FIRST_DAY.year, FIRST_DAY.month, FIRST_DAY.day, tzinfo=UTC)
    end = start + timedelta(days=days)
    figures: dict[str, Any] = {}
    figures["commit raw (s)"] = _timed(lambda: lake.replace_days("raw", raw, pairs))
    figures["commit 1m (s)"] = _timed(lambda: lake.replace_days("agg_1m", minutes, pairs))
    listing = Lake(lake.root)  # a fresh process: the table is loaded once, then cached
    figures["first listing (s)"] = _timed(lambda: listing.files("raw", None, start, end))
    figures["cached listing (s)"] = _timed(lambda: listing.files("raw", [1], start, end), 5)
    one_day = lake.files("raw", [1], start, start + timedelta(days=1))
    week = lake.files("raw", [1], start, end)
    cohort_1m = lake.files("agg_1m", None, start, end)
    figures["scan 1 user-day raw (s)"] = _timed(lambda: _scan(lake, one_day, "heart_rate"), 3)
    figures["scan 1 user x all days raw (s)"] = _timed(lambda: _scan(lake, week, "heart_rate"), 3)
    figures["scan cohort 1m (s)"] = _timed(lambda: _scan_1m(lake, cohort_1m), 3)
    everything = [*lake.files("raw", None, start, end).files, *cohort_1m.files]
    figures["integrity check, all files (s)"] = _timed(
        lambda: [check_file(lake.storage, f.path, f.size_bytes, None) for f in everything]
    )
    lake.replace_days("raw", raw, pairs)  # the first raw files become unreferenced
    figures["vacuum (s)"] = _timed(lambda: lake.vacuum(retention_hours=0))
    figures["files"] = len(everything)
    figures["bytes"] = lake.total_bytes()
    return figures


@contextmanager
def local_s3() -> Iterator[str]:
    """A moto server on 127.0.0.1 with a bucket; AWS_* variables set for this process."""
    import os

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
    }
    os.environ.update(env)
    boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    ).create_bucket(Bucket="bench")
    try:
        yield "s3://bench/lake"
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", help="s3://bucket/prefix (default: a local moto server)")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    raw = raw_rows(args.users, args.days)
    minutes = minute_rows(raw)
    folder = Path(tempfile.mkdtemp(prefix="stratum-bench-lake-"))
    try:
        on_disk = measure(Lake(folder / "lake"), raw, minutes, args.users, args.days)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.root:
        on_s3 = measure(Lake(args.root), raw, minutes, args.users, args.days)
    else:
        with local_s3() as root:
            on_s3 = measure(Lake(root), raw, minutes, args.users, args.days)
    rows = raw.num_rows
    print(f"{args.users} users x {args.days} days x {len(METRICS)} metrics at 1 Hz: {rows:,} rows")
    print(f"{'operation':34} {'folder':>10} {'S3':>10} {'S3/folder':>10}")
    result = {"rows": rows, "folder": on_disk, "s3": on_s3, "ratio": {}}
    for name, value in on_disk.items():
        s3_value = on_s3[name]
        if name.endswith("(s)"):
            ratio = s3_value / value if value else float("nan")
            result["ratio"][name] = ratio
            print(f"{name:34} {value:10.3f} {s3_value:10.3f} {ratio:10.1f}x")
        else:
            print(f"{name:34} {value:10,} {s3_value:10,}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
