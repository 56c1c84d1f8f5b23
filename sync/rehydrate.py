"""Copy tiered days back from the lake when new rows arrive for them (called by ingest).

After tiering, the lake holds the only copy of a day's raw and 1m rows. A late write into
such a day must not leave the warm store with just the new rows: the rollup refresh would
then rebuild the day from a fragment, and the next sync would overwrite the lake with it.
So, inside the ingest transaction and before the day's change number moves, the day's rows
are read back from the lake into raw_data and data_1m (rows already there - the new ones -
win) and the tiered mark is cleared.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import SyncFailed
from lake import Lake, lake_relation

log = logging.getLogger(__name__)

Pair = tuple[int, date]

# Locks every touched day_state row (in key order), so a tiering run either finishes before
# (and we see the mark) or waits for this ingest (and sees the day changed).
_LOCK_TOUCHED = """
SELECT d.user_id, d.day, d.tiered_seq IS NOT NULL AS tiered
FROM day_state d JOIN {days} t ON d.user_id = t.user_id AND d.day = t.day
ORDER BY d.user_id, d.day
FOR UPDATE OF d
"""
_COPY_BACK = {
    "raw": "INSERT INTO raw_data (ts, user_id, metric, value) "
    "SELECT ts, user_id, metric, value FROM stratum_rehydrate_raw "
    "ON CONFLICT (user_id, metric, ts) DO NOTHING",
    "agg_1m": "INSERT INTO data_1m (ts, user_id, metric, count, sum, min, max) "
    "SELECT ts, user_id, metric, count, sum, min, max FROM stratum_rehydrate_agg_1m "
    "ON CONFLICT (user_id, metric, ts) DO NOTHING",
}
_COLUMNS = {"raw": ("ts", "user_id", "metric", "value"),
            "agg_1m": ("ts", "user_id", "metric", "count", "sum", "min", "max")}  # fmt: skip


def lock_tiered_days(cur: adbc.Cursor, days_table: str) -> list[Pair]:
    """Lock the day_state rows of the touched days; return those that are tiered."""
    cur.execute(_LOCK_TOUCHED.format(days=days_table))
    locked = cur.fetch_arrow_table()
    return [
        (int(u), d)
        for u, d, tiered in zip(
            locked.column("user_id").to_pylist(),
            locked.column("day").to_pylist(),
            locked.column("tiered").to_pylist(),
            strict=True,
        )
        if tiered
    ]


def lake_root(cur: adbc.Cursor, configured: Path | None) -> Path:
    """The lake to read tiered days from: the configured one, else where tiering wrote."""
    if configured is not None:
        return configured
    cur.execute("SELECT root FROM lake_location")
    rows = cur.fetchall()
    if not rows:
        raise SyncFailed("days are tiered but no lake location is recorded; set STRATUM_LAKE_PATH")
    return Path(rows[0][0])


def rehydrate(cur: adbc.Cursor, lake: Lake, days: list[Pair]) -> int:
    """Copy the days' raw and 1m rows back from the lake; clear their tiered mark."""
    copied = 0
    for tier in ("raw", "agg_1m"):
        rows = read_days(lake, tier, days)
        if rows.num_rows:
            cur.adbc_ingest(f"stratum_rehydrate_{tier}", rows, mode="replace", temporary=True)
            cur.execute(_COPY_BACK[tier])
        copied += rows.num_rows if tier == "raw" else 0
    wanted = pa.table(
        {
            "user_id": pa.array([u for u, _ in days], pa.int32()),
            "day": pa.array([d for _, d in days], pa.date32()),
        }
    )
    cur.adbc_ingest("stratum_rehydrate_days", wanted, mode="replace", temporary=True)
    cur.execute(
        "UPDATE day_state d SET tiered_seq = NULL, tiered_at = NULL "
        "FROM stratum_rehydrate_days w WHERE d.user_id = w.user_id AND d.day = w.day"
    )
    cur.execute("SELECT nextval('catalog_seq')")
    log.info("rehydrated %d tiered user-days (%d raw rows) from %s", len(days), copied, lake.root)
    return copied


def read_days(lake: Lake, tier: str, days: list[Pair]) -> pa.Table:
    """The lake rows of those (user, day) pairs, as the warm-store table's columns."""
    parts = []
    with duckdb.connect() as conn:
        for user_id in sorted({u for u, _ in days}):
            user_days = sorted(d for u, d in days if u == user_id)
            start = datetime(user_days[0].year, user_days[0].month, user_days[0].day, tzinfo=UTC)
            end = datetime(user_days[-1].year, user_days[-1].month, user_days[-1].day, tzinfo=UTC)
            files = lake.files(tier, [user_id], start, end + timedelta(days=1))
            table = lake_relation(conn, files).to_arrow_table()
            keep = pc.is_in(table.column("date"), value_set=pa.array(user_days, pa.date32()))
            parts.append(table.filter(keep))
    if not parts:
        return pa.table({c: [] for c in _COLUMNS[tier]})
    return pa.concat_tables(parts).select(list(_COLUMNS[tier]))
