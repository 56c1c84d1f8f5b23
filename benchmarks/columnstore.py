"""What TimescaleDB's columnstore changes in the warm store, measured side by side.

A cohort at the metrics' native rates (heart rate at 1 Hz), of participants no preset
queries, goes into two scratch databases on the bench's server: one keeps its chunks in the
row store, the other compresses every chunk older than two days before the last day, as the
nightly job would. On both, the same steps are timed: warm bytes per raw row, a raw read of
one participant's first days, a late re-delivery of one participant-day and its rollup
refresh, and a sync of everything to a scratch lake. Only where the server runs TimescaleDB.
"""

from __future__ import annotations

import shutil
import statistics
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.dataset import Dataset, drop_database, sync_until
from engine.tiers import WARM_STORED_TABLES
from sync import timescale
from sync.columnstore import compress_warm_store
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.rollups import refresh_rollups
from sync.schema import init_schema

DAYS = 5
FIRST_USER = 60_001  # no preset's participant
GRACE_DAYS = 2  # STRATUM_COLUMNSTORE_AFTER_DAYS's default
HORIZON_DAYS = 30  # STRATUM_TIER_OLDER_THAN_DAYS's default: what the warm store holds
READS = 5
READ_DAYS = 2  # compressed in the columnstore database

_READ = (
    "SELECT ts, metric, value FROM raw_data WHERE user_id = $1 AND ts >= $2 AND ts < $3 "
    "ORDER BY metric, ts"
)


def columnstore_effect(dataset: Dataset) -> dict[str, Any]:
    with psycopg.connect(dataset.url) as conn:
        if not timescale.enabled(conn):
            return {"status": "not available", "note": "the bench's server runs plain PostgreSQL"}
    preset = dataset.preset
    users = max(1, preset.ingest_rows_target // 400_000)
    cohort = pa.concat_tables(
        generate_cohort(users, DAYS, preset.start, seed=preset.seed + 2, first_user_id=FIRST_USER)
    )
    out: dict[str, Any] = {"status": "ok", "users": users, "days": DAYS, "rows": cohort.num_rows}
    for store in ("rowstore", "columnstore"):
        out[store] = _measure(dataset, store, cohort)
    row, column = out["rowstore"], out["columnstore"]
    out["ratios"] = {
        key: column[key] / row[key] if row[key] else None
        for key in (
            "bytes_per_raw_row",
            "read_s",
            "late_ingest_s",
            "late_refresh_s",
            "sync_s",
        )
    }
    # The warm store at the defaults holds HORIZON_DAYS days, the last GRACE_DAYS uncompressed.
    out["steady_state_bytes_per_raw_row"] = (
        GRACE_DAYS * row["bytes_per_raw_row"]
        + (HORIZON_DAYS - GRACE_DAYS) * column["compressed_bytes_per_raw_row"]
    ) / HORIZON_DAYS
    return out


def _measure(dataset: Dataset, store: str, cohort: pa.Table) -> dict[str, Any]:
    first_day = dataset.preset.start
    last_day = first_day + timedelta(days=DAYS - 1)
    name = f"bench_{store}"
    drop_database(dataset.url, name)
    with psycopg.connect(dataset.server_url("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = dataset.server_url(name)
    lake_path = dataset.home / f"scratch-lake-{store}"
    shutil.rmtree(lake_path, ignore_errors=True)
    try:
        init_schema(url)
        result: dict[str, Any] = {}
        started = time.perf_counter()
        ingest_tables(url, [cohort])
        result["ingest_rows_per_s"] = cohort.num_rows / (time.perf_counter() - started)
        refreshed = refresh_rollups(url)
        result["refresh_raw_rows_per_s"] = cohort.num_rows / refreshed.seconds
        raw_rows = cohort.num_rows
        if store == "columnstore":
            cutoff = datetime.combine(last_day - timedelta(days=GRACE_DAYS), datetime.min.time())
            done = compress_warm_store(url, cutoff.replace(tzinfo=UTC))
            result["compress_s"] = done.seconds
            result["chunks"] = done.chunks
        with psycopg.connect(url) as conn:
            result["bytes"] = sum(timescale.table_bytes(conn, t) for t in WARM_STORED_TABLES)
            compressed = sum(timescale.columnstore_bytes(conn, t) for t in timescale.HYPERTABLES)
        result["bytes_per_raw_row"] = result["bytes"] / raw_rows
        old_rows = _rows_before(cohort, last_day - timedelta(days=GRACE_DAYS))
        result["compressed_bytes_per_raw_row"] = compressed / old_rows if old_rows else None
        result["read_s"] = _read_days(url, FIRST_USER, first_day)
        late = _redelivery(cohort, FIRST_USER, first_day)
        started = time.perf_counter()
        ingest_tables(url, [late])
        result["late_ingest_s"] = time.perf_counter() - started
        result["late_refresh_s"] = refresh_rollups(url).seconds
        result["late_rows"] = late.num_rows
        settings = dataset.settings(STRATUM_DATABASE_URL=url, STRATUM_LAKE_PATH=str(lake_path))
        synced = sync_until(settings, url, last_day)
        result["sync_s"] = synced.seconds
        result["sync_raw_rows_per_s"] = synced.rows["raw"] / synced.seconds
        result["raw_rows"] = raw_rows
        return result
    finally:
        drop_database(dataset.url, name)
        shutil.rmtree(lake_path, ignore_errors=True)


def _rows_before(cohort: pa.Table, day: date) -> int:
    ts = cohort.column("ts")
    cutoff = pa.scalar(datetime.combine(day, datetime.min.time(), UTC), ts.type)
    return int(pc.sum(pc.less(ts, cutoff)).as_py() or 0)


def _read_days(url: str, user: int, first_day: date) -> float:
    """Median seconds to read one participant's first READ_DAYS of raw rows, every metric."""
    start = datetime.combine(first_day, datetime.min.time(), UTC)
    times = []
    with adbc.connect(url) as conn, conn.cursor() as cur:
        for _ in range(READS):
            began = time.perf_counter()
            cur.execute(_READ, (user, start, start + timedelta(days=READ_DAYS)))
            cur.fetch_arrow_table()
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def _redelivery(table: pa.Table, user: int, first_day: date) -> pa.Table:
    """The participant's first day again with every value changed: a device re-upload."""
    start = datetime.combine(first_day, datetime.min.time(), UTC)
    ts = table.column("ts")
    day = pc.and_(
        pc.equal(table.column("user_id"), user),
        pc.less(ts, pa.scalar(start + timedelta(days=1), ts.type)),
    )
    late = table.filter(day)
    index = late.schema.get_field_index("value")
    return late.set_column(index, "value", pc.add(late.column("value"), 1.0))
