"""The tier table agrees with what the migrations create and what the lake writes."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import psycopg
import pytest

from engine.tiers import LAKE_TABLES, RAW, RESOLUTIONS, TIERED, TIERS, WARM_TABLES, Tier
from lake import TIERS as LAKE_LAYOUT
from lake import Lake, partition_columns, tier_schema
from lake.layout import value_columns
from tests.lake.builders import tier_rows


def test_one_row_per_resolution_finest_first() -> None:
    assert RESOLUTIONS == ("raw", "1m", "1h", "1d")
    assert all(TIERS[r].resolution == r for r in RESOLUTIONS)
    assert len(set(WARM_TABLES)) == len(set(LAKE_TABLES)) == len(TIERS)
    widths = [t.bucket_s for t in TIERS.values()]
    assert widths == sorted(widths) and RAW.bucket_s == 0 and RAW.bucket_unit == ""
    assert set(TIERED) == {RAW, TIERS["1m"]}  # 1h and 1d stay in the warm store


def test_lake_tables_are_the_tables_the_lake_lays_out() -> None:
    assert LAKE_TABLES == LAKE_LAYOUT


@pytest.mark.parametrize("tier", TIERS.values(), ids=RESOLUTIONS)
def test_lake_writes_each_lake_table(tmp_path: Path, tier: Tier) -> None:
    lake = Lake(tmp_path)
    pairs = [(1, date(2024, 1, 1))]
    version = lake.replace_days(tier.lake_table, tier_rows(tier.lake_table, pairs), pairs)
    assert lake.version(tier.lake_table) == version
    assert lake.table_dir(tier.lake_table).endswith(f"/{tier.lake_table}")
    assert partition_columns(tier.lake_table)[0] == "user_id"


@pytest.mark.parametrize("tier", TIERS.values(), ids=RESOLUTIONS)
def test_warm_table_exists_with_the_lake_tables_columns(warm_url: str, tier: Tier) -> None:
    """Export and rehydration copy rows between the two tables column by column."""
    with psycopg.connect(warm_url) as conn:
        columns = [
            name
            for (name,) in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s",
                (tier.warm_table,),
            )
        ]
    assert columns, f"{tier.warm_table} is not in the migrated schema"
    assert set(columns) == {"ts", "user_id", "metric", *value_columns(tier.lake_table)}
    assert set(columns) <= set(tier_schema(tier.lake_table).names)


@pytest.mark.parametrize("tier", [t for t in TIERS.values() if t is not RAW], ids=RESOLUTIONS[1:])
def test_bucket_width_is_its_date_trunc_unit(warm_url: str, tier: Tier) -> None:
    with psycopg.connect(warm_url) as conn:
        interval = f"1 {tier.bucket_unit}"
        row = conn.execute("SELECT extract(epoch FROM %s::interval)", (interval,)).fetchone()
    assert row is not None and int(row[0]) == tier.bucket_s


def test_lake_days_accepts_exactly_the_lake_tables(warm_url: str) -> None:
    with psycopg.connect(warm_url) as conn:
        for table in LAKE_TABLES:
            conn.execute(
                "INSERT INTO lake_days (user_id, tier, day, rows, checksum, change_seq, "
                "lake_version) VALUES (1, %s, '2024-01-01', 0, 0, 1, 0)",
                (table,),
            )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO lake_days (user_id, tier, day, rows, checksum, change_seq, "
                "lake_version) VALUES (1, '1m', '2024-01-01', 0, 0, 1, 0)"
            )
