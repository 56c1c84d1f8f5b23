"""Tier schemas and the partition layout of the lake (pure functions, no I/O).

Every tier is one Delta table under ``<root>/<tier>``. raw, agg_1m and agg_1h hold one
partition per user-month, agg_1d one per user-year, so that no tier is made of tiny files;
``date`` is a column inside the files, always the UTC day of ``ts``, and its Delta statistics
bound each file's days for pruning.

The fine tiers (raw, agg_1m) are replaced day by day (``replaces_days``): a month partition
holds several files with disjoint day ranges (one per freshly synced run of days) until
compaction merges them into one sorted file. The coarse tiers are replaced a whole partition
at a time (their rows are rebuilt from the warm store, which keeps them forever).
"""

from __future__ import annotations

import functools
from datetime import date, timedelta
from typing import Final

import numpy as np
import pyarrow as pa

TIERS: Final = ("raw", "agg_1m", "agg_1h", "agg_1d")

TS_TYPE: Final = pa.timestamp("us", tz="UTC")

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
# Every tier partitions by a string column derived from ``date``. Until issue 12 the fine
# tiers partitioned by ``date`` itself: one file per user-day, 365,000 per tier at 500 x 730.
_DERIVED: Final[dict[str, str]] = {
    "raw": "month",
    "agg_1m": "month",
    "agg_1h": "month",
    "agg_1d": "year",
}
_DAY_REPLACED: Final = frozenset({"raw", "agg_1m"})
# The partition columns of lakes written before issue 12 (see ``check_partitioning``).
OLD_FINE_COLUMNS: Final = ("user_id", "date")

PartitionKey = tuple[int, str]  # (user_id, '2024-01' or '2024')


class LayoutError(RuntimeError):
    """A table on disk is laid out differently from what this version reads."""


def check_tier(tier: str) -> str:
    """Return ``tier`` or raise ValueError naming the allowed tiers."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; allowed: {', '.join(TIERS)}")
    return tier


def value_columns(tier: str) -> tuple[str, ...]:
    """Measure columns of a tier (what the checksum covers besides metric and ts)."""
    fields = _RAW_VALUES if check_tier(tier) == "raw" else _AGG_VALUES
    return tuple(f.name for f in fields)


def derived_column(tier: str) -> str:
    """The partition column computed from ``date``: 'month' or 'year'."""
    return _DERIVED[check_tier(tier)]


def replaces_days(tier: str) -> bool:
    """True when ``Lake.replace_days`` replaces exactly the given days of a tier (raw,
    agg_1m); False when it replaces whole partitions (agg_1h, agg_1d)."""
    return check_tier(tier) in _DAY_REPLACED


def replaced_span(tier: str, user_id: int, day: date) -> tuple[date, date]:
    """First and last day (inclusive) that replacing ``day`` rewrites from new rows: the day
    itself for the fine tiers, its whole month/year partition for the coarse ones."""
    if replaces_days(tier):
        return day, day
    return partition_days(tier, partition_of(tier, user_id, day))


def check_partitioning(tier: str, columns: list[str] | tuple[str, ...]) -> None:
    """Raise LayoutError unless a table's partition columns are the tier's."""
    if tuple(columns) == partition_columns(tier):
        return
    if tuple(columns) == OLD_FINE_COLUMNS and replaces_days(tier):
        raise LayoutError(
            f"lake table {tier!r} is partitioned by user_id/date (one file per participant-"
            "day, written before issue 12); this version reads user_id/month partitions. "
            "Run `stratum maintain --relayout` once to rewrite it"
        )
    raise LayoutError(
        f"lake table {tier!r} is partitioned by {list(columns)}, expected "
        f"{list(partition_columns(tier))}"
    )


def data_schema(tier: str) -> pa.Schema:
    """Columns a writer supplies to ``Lake.replace_days`` (the derived column is optional)."""
    values = _RAW_VALUES if check_tier(tier) == "raw" else _AGG_VALUES
    return pa.schema([*_KEY_FIELDS, *values])


def tier_schema(tier: str) -> pa.Schema:
    """Full logical schema of a tier, including partition columns."""
    return data_schema(tier).append(pa.field(derived_column(tier), pa.string(), nullable=False))


def partition_columns(tier: str) -> tuple[str, ...]:
    """Partition columns of a tier, outermost first."""
    return ("user_id", derived_column(tier))


def file_schema(tier: str) -> pa.Schema:
    """Columns stored inside the parquet files (Delta keeps partition columns in the path)."""
    schema = tier_schema(tier)
    for name in partition_columns(tier):
        schema = schema.remove(schema.get_field_index(name))
    return schema


def partition_of(tier: str, user_id: int, day: date) -> PartitionKey:
    """The partition key holding that user-day, e.g. ``(42, '2024-01')`` for raw."""
    if derived_column(tier) == "month":
        return (user_id, f"{day.year:04d}-{day.month:02d}")
    return (user_id, f"{day.year:04d}")


def partition_days(tier: str, key: PartitionKey) -> tuple[date, date]:
    """First and last day (inclusive) a partition can hold."""
    return _label_days(derived_column(tier), key[1])


@functools.lru_cache(maxsize=4096)
def _label_days(derived: str, label: str) -> tuple[date, date]:
    # Cached: a snapshot of 12,000 month files asks for a few dozen distinct labels.
    year = int(label[:4])
    if derived == "year":
        return date(year, 1, 1), date(year, 12, 31)
    month = int(label[5:7])
    first = date(year, month, 1)
    following = date(year + month // 12, month % 12 + 1, 1)
    return first, following - timedelta(days=1)


def partition_values(tier: str, key: PartitionKey) -> dict[str, str | None]:
    """Delta partition values (strings) of a partition key."""
    user_col, label_col = partition_columns(tier)
    return {user_col: str(key[0]), label_col: key[1]}


def partition_dir(tier: str, key: PartitionKey) -> str:
    """Hive-style relative folder of a partition, e.g. ``user_id=42/date=2024-01-01``."""
    return "/".join(f"{k}={v}" for k, v in partition_values(tier, key).items())


def partition_from_values(tier: str, values: dict[str, str | None]) -> PartitionKey:
    """Inverse of ``partition_values`` (for keys read back from the Delta log)."""
    user_col, label_col = partition_columns(tier)
    user_text, label = values.get(user_col), values.get(label_col)
    if user_text is None or label is None:
        raise ValueError(f"{tier}: file without partition values {values!r}")
    return (int(user_text), label)


def partition_ordinals(tier: str, day_numbers: np.ndarray) -> np.ndarray:
    """Sortable int64 partition label per row, from day numbers (days since 1970-01-01)."""
    days = day_numbers.astype("datetime64[D]")
    unit = "datetime64[M]" if derived_column(tier) == "month" else "datetime64[Y]"
    return days.astype(unit).astype(np.int64)


def partition_from_ordinal(tier: str, user_id: int, ordinal: int) -> PartitionKey:
    """The partition key for a user and a label from ``partition_ordinals``."""
    if derived_column(tier) == "month":
        year, month0 = divmod(ordinal, 12)
        return (user_id, f"{1970 + year:04d}-{month0 + 1:02d}")
    return (user_id, f"{1970 + ordinal:04d}")
