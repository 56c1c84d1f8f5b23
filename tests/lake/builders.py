"""Small, deterministic tier tables for the lake tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa

from lake import Lake, LakeFiles, lake_relation
from lake.layout import data_schema, derived_column

Pair = tuple[int, date]

JAN1 = date(2024, 1, 1)
ALL_TIME = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
BUCKETS = {"raw": 60, "agg_1m": 60, "agg_1h": 3600, "agg_1d": 86400}  # seconds between rows


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def days_from(first: date, count: int) -> list[date]:
    return [first + timedelta(days=i) for i in range(count)]


def tier_rows(
    tier: str,
    pairs: Iterable[Pair],
    metrics: Sequence[str] = ("hr", "steps"),
    seed: int = 0,
    step_seconds: int | None = None,
) -> pa.Table:
    """Rows of ``tier`` for each (user, day) and metric, one per bucket (raw: per minute)."""
    step = step_seconds or BUCKETS[tier]
    per_day = 86400 // step
    columns: dict[str, list[np.ndarray]] = {name: [] for name in data_schema(tier).names}
    for user_id, day in sorted(set(pairs)):
        for metric in metrics:
            rng = np.random.default_rng([seed, user_id, day.toordinal(), len(metric)])
            start = np.datetime64(day.isoformat(), "us").astype(np.int64)
            columns["user_id"].append(np.full(per_day, user_id, np.int32))
            columns["date"].append(np.full(per_day, np.datetime64(day.isoformat(), "D")))
            columns["metric"].append(np.full(per_day, metric, dtype=object))
            columns["ts"].append(start + np.arange(per_day, dtype=np.int64) * step * 1_000_000)
            if tier == "raw":
                columns["value"].append(rng.normal(70, 10, per_day))
            else:
                count = rng.integers(1, 60, per_day)
                low = rng.normal(60, 5, per_day)
                columns["count"].append(count)
                columns["sum"].append(low * count + count)
                columns["min"].append(low)
                columns["max"].append(low + 2)
    schema = data_schema(tier)
    if not columns["user_id"]:
        return schema.empty_table()
    arrays = []
    for field in schema:
        values = np.concatenate(columns[field.name])
        if field.name == "ts":
            arrays.append(pa.array(values, pa.int64()).cast(field.type))
        else:
            arrays.append(pa.array(values).cast(field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def with_partition_column(tier: str, table: pa.Table) -> pa.Table:
    """``table`` plus its month/year column, as another Delta writer must supply it."""
    name = derived_column(tier)
    unit = "datetime64[M]" if name == "month" else "datetime64[Y]"
    days = table.column("date").cast(pa.int32()).to_numpy().astype("datetime64[D]")
    return table.append_column(name, pa.array(days.astype(unit).astype(str)))


def sorted_rows(tier: str, table: pa.Table) -> list[dict[str, object]]:
    """Rows as dicts in a canonical order (to compare tables read back in any order)."""
    keys = [(name, "ascending") for name in ("user_id", "date", "metric", "ts")]
    return table.select(data_schema(tier).names).sort_by(keys).to_pylist()


def read_all(lake: Lake, tier: str, version: int | None = None) -> pa.Table:
    files = lake.files(tier, None, *ALL_TIME, version=version)
    return read_files(lake, files)


def read_files(lake: Lake, files: LakeFiles) -> pa.Table:
    with duckdb.connect() as conn:
        return lake_relation(conn, files, storage=lake.storage).to_arrow_table()
