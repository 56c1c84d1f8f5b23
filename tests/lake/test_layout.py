"""Tier schemas and partition keys."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lake import TIERS, partition_columns, partition_of, tier_schema
from lake.layout import (
    file_schema,
    partition_dir,
    partition_from_ordinal,
    partition_from_values,
    partition_ordinals,
    partition_values,
)
from lake.layout import partition_days as days_of

TS = pa.timestamp("us", tz="UTC")
LEAP = date(2024, 2, 29)


def test_schemas() -> None:
    assert tier_schema("raw") == pa.schema(
        [
            pa.field("user_id", pa.int32(), nullable=False),
            pa.field("date", pa.date32(), nullable=False),
            pa.field("metric", pa.string(), nullable=False),
            pa.field("ts", TS, nullable=False),
            pa.field("value", pa.float64()),
            pa.field("month", pa.string(), nullable=False),
        ]
    )
    agg = ["user_id", "date", "metric", "ts", "count", "sum", "min", "max"]
    assert tier_schema("agg_1m").names == [*agg, "month"]
    assert tier_schema("agg_1h").names == [*agg, "month"]
    assert tier_schema("agg_1d").names == [*agg, "year"]
    assert file_schema("agg_1h").names == agg[1:]  # `date` stays inside the files
    assert file_schema("raw").names == ["date", "metric", "ts", "value"]


@pytest.mark.parametrize(
    ("tier", "columns", "key", "first", "last"),
    [
        ("raw", ("user_id", "month"), (4, "2024-02"), date(2024, 2, 1), date(2024, 2, 29)),
        ("agg_1m", ("user_id", "month"), (4, "2024-02"), date(2024, 2, 1), date(2024, 2, 29)),
        ("agg_1h", ("user_id", "month"), (4, "2024-02"), date(2024, 2, 1), date(2024, 2, 29)),
        ("agg_1d", ("user_id", "year"), (4, "2024"), date(2024, 1, 1), date(2024, 12, 31)),
    ],
)
def test_partition_keys(
    tier: str, columns: tuple[str, ...], key: tuple[int, object], first: date, last: date
) -> None:
    day = date(2024, 2, 29)
    assert partition_columns(tier) == columns
    assert partition_of(tier, 4, day) == key
    assert days_of(tier, partition_of(tier, 4, day)) == (first, last)
    values = partition_values(tier, partition_of(tier, 4, day))
    assert partition_from_values(tier, values) == key
    assert partition_dir(tier, partition_of(tier, 4, day)) == "/".join(
        f"{c}={v}" for c, v in values.items()
    )
    ordinal = int(partition_ordinals(tier, np.array([(day - date(1970, 1, 1)).days]))[0])
    assert partition_from_ordinal(tier, 4, ordinal) == key


def test_december_and_pre_epoch_months() -> None:
    assert days_of("agg_1h", (1, "2023-12")) == (date(2023, 12, 1), date(2023, 12, 31))
    day_numbers = np.array([(date(1969, 12, 31) - date(1970, 1, 1)).days])
    ordinal = int(partition_ordinals("agg_1h", day_numbers)[0])
    assert partition_from_ordinal("agg_1h", 1, ordinal) == (1, "1969-12")


def test_tiers_are_the_four_resolutions() -> None:
    assert TIERS == ("raw", "agg_1m", "agg_1h", "agg_1d")
    with pytest.raises(ValueError, match="allowed: raw, agg_1m, agg_1h, agg_1d"):
        tier_schema("agg_2h")


def test_lake_imports_nothing_of_ours() -> None:
    script = (
        "import sys, lake; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'engine', 'sync', 'api'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert out.stdout.strip() == "[]"
