"""Shared helpers of the lake sync tests: small cohorts and independent source checksums."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import psycopg
import pyarrow as pa

from engine.settings import LakeSettings, Settings, load_settings
from engine.tiers import by_lake_table
from lake import TIERS, Lake, day_checksums
from sync.export import SyncResult, sync_to_lake
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.rollups import refresh_rollups

Pair = tuple[int, date]
FIRST_DAY = date(2024, 1, 29)  # five days across a month boundary
DAYS = 5
TODAY = FIRST_DAY + timedelta(days=DAYS)  # the cohort ends "yesterday"


def load_cohort(
    url: str, users: int = 2, days: int = DAYS, first_day: date = FIRST_DAY, every: int = 60
) -> None:
    """A small cohort (every metric once a minute), ingested and rolled up."""
    ingest_tables(url, generate_cohort(users, days, first_day, every_s=every))
    refresh_rollups(url)


def ingest_rows(url: str, rows: Iterable[tuple[str, int, str, float]]) -> None:
    """Ingest (iso ts, user_id, metric, value) rows, as a late delivery would."""
    ingest_tables(url, [ingest_table(rows)])


def ingest_table(rows: Iterable[tuple[str, int, str, float]]) -> pa.Table:
    """(iso ts, user_id, metric, value) rows as a table of the raw schema."""
    rows = list(rows)
    return pa.table(
        {
            "ts": pa.array([r[0] for r in rows]).cast(pa.timestamp("us", tz="UTC")),
            "user_id": pa.array([r[1] for r in rows], pa.int32()),
            "metric": pa.array([r[2] for r in rows], pa.string()),
            "value": pa.array([r[3] for r in rows], pa.float64()),
        }
    )


def run_sync(
    url: str, lake: Lake, today: date = TODAY, grace: int = 1, batch: int = 3
) -> SyncResult:
    return sync_to_lake(url, lake, grace_days=grace, batch_days=batch, today=today)


def source_stats(url: str, tier: str) -> dict[Pair, tuple[int, int]]:
    """(rows, checksum) per (user, day) of a warm-store table, read row by row."""
    value_columns = "value" if tier == "raw" else 'count, "sum", "min", "max"'
    with adbc.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT user_id, (ts AT TIME ZONE 'UTC')::date AS date, metric, ts, "
            f"{value_columns} FROM {by_lake_table(tier).warm_table}"
        )
        return day_checksums(tier, cur.fetch_arrow_table())


def lake_stats(lake: Lake, tier: str, pairs: Iterable[Pair]) -> dict[Pair, tuple[int, int]]:
    return dict(lake.day_stats(tier, pairs))


def assert_lake_equals_source(url: str, lake: Lake, before: date) -> None:
    """Every (user, day, tier) before `before` reads back from the lake as in the source."""
    for tier in TIERS:
        source = {p: s for p, s in source_stats(url, tier).items() if p[1] < before}
        assert source, f"no source rows for {tier}"
        assert lake_stats(lake, tier, source) == source, tier


def lake_days(url: str) -> dict[tuple[int, str, date], tuple[int, int, int]]:
    """(user, tier, day) -> (rows, checksum, change_seq)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT user_id, tier, day, rows, checksum, change_seq FROM lake_days"
        ).fetchall()
    return {(u, t, d): (r, c, s) for u, t, d, r, c, s in rows}


def day_state(url: str) -> dict[Pair, tuple[int, int, int, int | None]]:
    """(user, day) -> (change_seq, refreshed_seq, synced_seq, tiered_seq)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT user_id, day, change_seq, refreshed_seq, synced_seq, tiered_seq FROM day_state"
        ).fetchall()
    return {(u, d): (c, r, s, t) for u, d, c, r, s, t in rows}


def job_settings(tmp_path: Path, tier_older_than_days: int) -> Settings:
    """Settings for the job tests: a lake under tmp_path, small batches, no vacuum retention."""
    base = load_settings({"STRATUM_HOME": str(tmp_path / "home")})
    lake = LakeSettings(
        path=tmp_path / "lake",
        sync_grace_days=1,
        sync_batch_days=3,
        vacuum_retention_hours=0,
        compact_after_days=7,
        tier_older_than_days=tier_older_than_days,
        columnstore_after_days=2,
        scrub_nights=1,
    )
    return replace(base, lake=lake)


def make_lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path / "lake")
