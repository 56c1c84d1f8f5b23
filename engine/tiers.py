"""The tier table: each level of detail stratum keeps, and its name in every place.

A tier is one level of detail (raw samples, 1-minute, 1-hour or 1-day buckets) held in both
stores. Queries name it by its resolution, the warm store keeps it in one table, the lake in
one Delta table (the lake's own name for the tier, which `lake` lays out by itself). This is
the only place the names meet; identifiers that reach SQL come from here, never from input.

Pure data, no imports of ours, so the write side (sync) can share it as it shares the
metric registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Resolution = Literal["raw", "1m", "1h", "1d"]


@dataclass(frozen=True)
class Tier:
    resolution: Resolution  # its name in queries
    bucket_s: int  # 0 for raw: its spacing is each metric's native interval
    bucket_unit: str  # date_trunc unit computing this tier from raw ('' for raw)
    warm_table: str  # what readers select from in the warm store
    lake_table: str  # Delta table in the lake (lake.TIERS)
    stored_in: str = ""  # the table writers fill, when warm_table is a view over it

    @property
    def write_table(self) -> str:
        """The warm table that holds this tier's written rows."""
        return self.stored_in or self.warm_table


TIERS: dict[Resolution, Tier] = {
    tier.resolution: tier
    for tier in (
        # resolution, bucket_s, bucket_unit, warm_table, lake_table
        Tier("raw", 0, "", "raw_data", "raw"),
        # data_1m is a view: the stored buckets, plus the raw rows of per-minute series days
        # (RAW_MINUTE_DAYS), each its own bucket (migration 013).
        Tier("1m", 60, "minute", "data_1m", "agg_1m", stored_in="data_1m_stored"),
        Tier("1h", 3600, "hour", "data_1h", "agg_1h"),
        Tier("1d", 86400, "day", "data_1d", "agg_1d"),
    )
}

RESOLUTIONS: tuple[Resolution, ...] = tuple(TIERS)  # finest first
WARM_TABLES: tuple[str, ...] = tuple(t.warm_table for t in TIERS.values())
# (user, metric, UTC day)s whose raw rows all sit on whole minutes: data_1m reads their raw
# rows as their 1-minute buckets, and the refresh stores no 1-minute rows for them.
RAW_MINUTE_DAYS = "raw_minute_days"
# The warm store's tables on disk (their bytes are the warm store's size).
WARM_STORED_TABLES: tuple[str, ...] = (
    *(t.write_table for t in TIERS.values()),
    RAW_MINUTE_DAYS,
)
LAKE_TABLES: tuple[str, ...] = tuple(t.lake_table for t in TIERS.values())
RAW = TIERS["raw"]
# Tiering removes these from the warm store once the lake holds them verified (an ingest
# into such a day copies them back); 1h and 1d stay in the warm store for good.
TIERED: tuple[Tier, ...] = (RAW, TIERS["1m"])


def by_lake_table(name: str) -> Tier:
    """The tier the lake stores in Delta table `name`."""
    for tier in TIERS.values():
        if tier.lake_table == name:
            return tier
    raise KeyError(name)


def minute_rows(series: Callable[[str], str], lo: str, hi: str) -> str:
    """A subquery of the 1m tier's rows (ts, user_id, metric, count, sum, min, max) in
    [lo, hi) for the series `series(prefix)` selects (a condition on `prefix`user_id and
    `prefix`metric): the stored buckets, plus the raw rows of per-minute days.

    It is the data_1m view with the reader's filters carried to the per-minute records. The
    view cannot carry them: each read through it hashed every record of the warm store, for
    each export window (sync 6.6x slower at 2,114 records). `lo` and `hi` are timestamptz
    SQL expressions; everything here is our constants."""

    # The series' records of the UTC days the window touches (hi is exclusive: a window
    # ending at midnight does not touch the day it ends on), so only theirs are hashed.
    def in_window(prefix: str) -> str:
        return (
            f"{series(prefix)} AND {prefix}day >= ({lo} AT TIME ZONE 'UTC')::date AND "
            f"{prefix}day <= (({hi} - interval '1 microsecond') AT TIME ZONE 'UTC')::date"
        )

    records = (
        f"SELECT 1 FROM {RAW_MINUTE_DAYS} d WHERE d.user_id = r.user_id "  # noqa: S608
        f"AND d.metric = r.metric AND d.day = (r.ts AT TIME ZONE 'UTC')::date AND {in_window('d.')}"
    )
    # Whether the window holds a per-minute day at all, asked once (an InitPlan): driven
    # from the raw rows alone, PostgreSQL scanned a 1 Hz day of raw to find none per-minute.
    any_record = f"SELECT 1 FROM {RAW_MINUTE_DAYS} WHERE {in_window('')}"  # noqa: S608
    minute = TIERS["1m"]
    return (
        f"(SELECT ts, user_id, metric, count, sum, min, max FROM {minute.write_table} "  # noqa: S608
        f"WHERE {series('')} AND ts >= {lo} AND ts < {hi} "
        "UNION ALL "
        "SELECT r.ts, r.user_id, r.metric, 1::bigint, r.value, r.value, r.value "
        f"FROM {RAW.warm_table} r WHERE {series('r.')} AND r.ts >= {lo} AND r.ts < {hi} "
        f"AND EXISTS ({records}) AND EXISTS ({any_record}))"
    )
