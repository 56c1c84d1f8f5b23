"""Tier schemas and the partition layout of the lake (pure functions, no I/O).

Every tier is one Delta table under ``<root>/<tier>``. The fine tiers (raw, agg_1m) hold one
partition per user-day; the coarse tiers hold one per user-month (agg_1h) or user-year
(agg_1d) so that no tier is made of tiny files. ``date`` is always the UTC day of ``ts``.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Final

import numpy as np
import pyarrow as pa

TIERS: Final = ("raw", "agg_1m", "agg_1h", "agg_1d")

TS_TYPE: Final = pa.timestamp("us", tz="UTC")
EPOCH: Final = date(1970, 1, 1)

_KEY_FIELDS: Final = (
    pa.field("user_id", pa.int32(), nullable=False),
    pa.field("date", pa.date32(), nullable=False),
    pa.field("metric", pa.string(), nullable=False),
    pa.field("ts", TS_TYPE, nullable=False),
)
_RAW_VALUES: Final = (pa.field("value", pa.float64()),)
_AGG_VALUES: Final = (
    pa.field("count", pa.int64()),
    pa.field("sum", pa.float64()),
    pa.field("min", pa.float64()),
    pa.field("max", pa.float64()),
)
# The coarse tiers partition by a derived string column; fine tiers by the day itself.
_DERIVED: Final[dict[str, str | None]] = {
    "raw": None,
    "agg_1m": None,
    "agg_1h": "month",
    "agg_1d": "year",
}

PartitionKey = tuple[int, date] | tuple[int, str]


def check_tier(tier: str) -> str:
    """Return ``tier`` or raise ValueError naming the allowed tiers."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; allowed: {', '.join(TIERS)}")
    return tier


def value_columns(tier: str) -> tuple[str, ...]:
    """Measure columns of a tier (what the checksum covers besides metric and ts)."""
    fields = _RAW_VALUES if check_tier(tier) == "raw" else _AGG_VALUES
    return tuple(f.name for f in fields)


def derived_column(tier: str) -> str | None:
    """The partition column computed from ``date`` ('month'/'year'), if the tier has one."""
    return _DERIVED[check_tier(tier)]


def data_schema(tier: str) -> pa.Schema:
    """Columns a writer supplies to ``Lake.replace_days`` (the derived column is optional)."""
    values = _RAW_VALUES if check_tier(tier) == "raw" else _AGG_VALUES
    return pa.schema([*_KEY_FIELDS, *values])


def tier_schema(tier: str) -> pa.Schema:
    """Full logical schema of a tier, including partition columns."""
    schema = data_schema(tier)
    derived = derived_column(tier)
    if derived is not None:
        schema = schema.append(pa.field(derived, pa.string(), nullable=False))
    return schema


def partition_columns(tier: str) -> tuple[str, ...]:
    """Partition columns of a tier, outermost first."""
    derived = derived_column(tier)
    return ("user_id", "date") if derived is None else ("user_id", derived)


def file_schema(tier: str) -> pa.Schema:
    """Columns stored inside the parquet files (Delta keeps partition columns in the path)."""
    schema = tier_schema(tier)
    for name in partition_columns(tier):
        schema = schema.remove(schema.get_field_index(name))
    return schema


def partition_of(tier: str, user_id: int, day: date) -> PartitionKey:
    """The partition key holding that user-day, e.g. ``(42, '2024-01')`` for agg_1h."""
    derived = derived_column(tier)
    if derived is None:
        return (user_id, day)
    if derived == "month":
        return (user_id, f"{day.year:04d}-{day.month:02d}")
    return (user_id, f"{day.year:04d}")


def partition_days(tier: str, key: PartitionKey) -> tuple[date, date]:
    """First and last day (inclusive) a partition can hold."""
    label = key[1]
    if isinstance(label, date):
        return label, label
    derived = derived_column(tier)
    year = int(label[:4])
    if derived == "year":
        return date(year, 1, 1), date(year, 12, 31)
    month = int(label[5:7])
    first = date(year, month, 1)
    following = date(year + month // 12, month % 12 + 1, 1)
    return first, following - timedelta(days=1)


def partition_values(tier: str, key: PartitionKey) -> dict[str, str | None]:
    """Delta partition values (strings) of a partition key."""
    label = key[1]
    text = label.isoformat() if isinstance(label, date) else label
    user_col, label_col = partition_columns(tier)
    return {user_col: str(key[0]), label_col: text}


def partition_dir(tier: str, key: PartitionKey) -> str:
    """Hive-style relative folder of a partition, e.g. ``user_id=42/date=2024-01-01``."""
    return "/".join(f"{k}={v}" for k, v in partition_values(tier, key).items())


def partition_from_values(tier: str, values: dict[str, str | None]) -> PartitionKey:
    """Inverse of ``partition_values`` (for keys read back from the Delta log)."""
    user_col, label_col = partition_columns(tier)
    user_text, label = values.get(user_col), values.get(label_col)
    if user_text is None or label is None:
        raise ValueError(f"{tier}: file without partition values {values!r}")
    if derived_column(tier) is None:
        return (int(user_text), date.fromisoformat(label))
    return (int(user_text), label)


def partition_ordinals(tier: str, day_numbers: np.ndarray) -> np.ndarray:
    """Sortable int64 partition label per row, from day numbers (days since 1970-01-01)."""
    days = day_numbers.astype("datetime64[D]")
    derived = derived_column(tier)
    if derived is None:
        return day_numbers.astype(np.int64)
    unit = "datetime64[M]" if derived == "month" else "datetime64[Y]"
    return days.astype(unit).astype(np.int64)


def partition_from_ordinal(tier: str, user_id: int, ordinal: int) -> PartitionKey:
    """The partition key for a user and a label from ``partition_ordinals``."""
    derived = derived_column(tier)
    if derived is None:
        return (user_id, EPOCH + timedelta(days=ordinal))
    if derived == "month":
        year, month0 = divmod(ordinal, 12)
        return (user_id, f"{1970 + year:04d}-{month0 + 1:02d}")
    return (user_id, f"{1970 + ordinal:04d}")
