"""Copy tiered days back from the lake when new rows arrive for them (called by ingest).

After tiering, the lake holds the only copy of a day's raw and 1m rows. A late write into
such a day must not leave the warm store with just the new rows: the rollup refresh would
then rebuild the day from a fragment, and the next sync would overwrite the lake with it.
So, inside the ingest transaction and before the day's change number moves, the day's rows
are read back from the lake into raw_data and data_1m_stored (rows already there - the new
ones - win) and the tiered mark is cleared.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import SyncFailed, first_few
from engine.tiers import RAW, RAW_MINUTE_DAYS, TIERED, Tier
from engine.timestamps import midnight
from lake import Lake, partition_of
from lake.layout import value_columns
from lake.read import read_partition_file

log = logging.getLogger(__name__)

Pair = tuple[int, date]

# lake_damage's reason for the days of a backfill batch between its marks and its records.
LOADING = "being loaded by stratum backfill (run it again if it was interrupted)"
_SHOWN = 5

# Locks every touched day_state row (in key order), so a tiering run either finishes before
# (and we see the mark) or waits for this ingest (and sees the day changed).
_LOCK_TOUCHED = """
SELECT d.user_id, d.day, d.tiered_seq IS NOT NULL AS tiered
FROM day_state d JOIN {days} t ON d.user_id = t.user_id AND d.day = t.day
ORDER BY d.user_id, d.day
FOR UPDATE OF d
"""


def _columns(tier: Tier) -> tuple[str, ...]:
    """The warm table's columns, which the lake table holds too."""
    return ("ts", "user_id", "metric", *value_columns(tier.lake_table))


def _copy_back(tier: Tier) -> str:
    columns = ", ".join(_columns(tier))
    # Rows already in the warm store are the newly delivered ones: they win.
    return (
        f"INSERT INTO {tier.write_table} ({columns}) "  # noqa: S608 (our constants)
        f"SELECT {columns} FROM stratum_rehydrate_{tier.lake_table} "
        "ON CONFLICT (user_id, metric, ts) DO NOTHING"
    )


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


def lake_root(cur: adbc.Cursor, configured: str | Path | None) -> str | Path:
    """The lake to read tiered days from: the configured one, else where tiering wrote."""
    if configured is not None:
        return configured
    cur.execute("SELECT root FROM lake_location")
    rows = cur.fetchall()
    if not rows:
        raise SyncFailed("days are tiered but no lake location is recorded; set STRATUM_LAKE_PATH")
    return str(rows[0][0])


def rehydrate(cur: adbc.Cursor, lake: Lake, days: list[Pair]) -> int:
    """Copy the days' raw and 1m rows back from the lake; clear their tiered mark. SyncFailed
    naming them when some are still being loaded by a backfill."""
    wanted = pa.table(
        {
            "user_id": pa.array([u for u, _ in days], pa.int32()),
            "day": pa.array([d for _, d in days], pa.date32()),
        }
    )
    cur.adbc_ingest("stratum_rehydrate_days", wanted, mode="replace", temporary=True)
    _refuse_days_being_loaded(cur)
    copied = 0
    for tier in TIERED:
        rows = read_days(lake, tier, days)
        if rows.num_rows:
            name = f"stratum_rehydrate_{tier.lake_table}"
            cur.adbc_ingest(name, rows, mode="replace", temporary=True)
            cur.execute(_copy_back(tier))
        copied += rows.num_rows if tier is RAW else 0
    # The lake's 1m buckets are now stored rows: no day may also read them from raw (tiering
    # removed the per-minute records; the refresh that follows decides again).
    cur.execute(
        f"DELETE FROM {RAW_MINUTE_DAYS} d USING stratum_rehydrate_days w "  # noqa: S608
        "WHERE d.user_id = w.user_id AND d.day = w.day"
    )
    cur.execute(
        "UPDATE day_state d SET tiered_seq = NULL, tiered_at = NULL "
        "FROM stratum_rehydrate_days w WHERE d.user_id = w.user_id AND d.day = w.day"
    )
    cur.execute("SELECT nextval('catalog_seq')")
    log.info("rehydrated %d tiered user-days (%d raw rows) from %s", len(days), copied, lake.root)
    return copied


def _refuse_days_being_loaded(cur: adbc.Cursor) -> None:
    cur.execute(
        "SELECT DISTINCT l.user_id, l.day FROM lake_damage l "  # noqa: S608 (a constant)
        "JOIN stratum_rehydrate_days w ON l.user_id = w.user_id AND l.day = w.day "
        f"WHERE l.reason = '{LOADING}' ORDER BY l.user_id, l.day"
    )
    loading = cur.fetchall()
    if loading:
        shown = first_few(loading, lambda p: f"user {p[0]} {p[1]}", _SHOWN)
        raise SyncFailed(
            f"{shown} {'is' if len(loading) == 1 else 'are'} being loaded by stratum "
            "backfill, which was interrupted or could not verify them, so the lake may not "
            "hold them yet: run that backfill again, then this ingest (nothing of it was "
            "written)"
        )


def read_days(lake: Lake, tier: Tier, days: list[Pair]) -> pa.Table:
    """The lake rows of those (user, day) pairs, as the warm-store table's columns.

    Read with pyarrow, page checksums verified: the lake holds these days' only copy, so a
    damaged file refuses the write (naming the days) rather than copying wrong rows back or
    rebuilding the days from a fragment.
    """
    parts = []
    for user_id in sorted({u for u, _ in days}):
        user_days = sorted(d for u, d in days if u == user_id)
        start, end = midnight(user_days[0]), midnight(user_days[-1] + timedelta(days=1))
        for lake_file in lake.files(tier.lake_table, [user_id], start, end).files:
            key = partition_of(tier.lake_table, lake_file.user_id, lake_file.first_day)
            try:
                table = read_partition_file(lake.storage, tier.lake_table, lake_file.path, key)
            except (pa.ArrowException, OSError) as exc:
                raise SyncFailed(
                    f"the lake copy of user {user_id}'s tiered days "
                    f"{user_days[0]}..{user_days[-1]} ({tier.lake_table}) cannot be read "
                    f"({exc}); run `stratum verify` and `stratum repair`"
                ) from None
            keep = pc.is_in(table.column("date"), value_set=pa.array(user_days, pa.date32()))
            parts.append(table.filter(keep).select(list(_columns(tier))))
    if not parts:
        return pa.table({c: [] for c in _columns(tier)})
    return pa.concat_tables(parts)
