"""Rollup min/max equal to sum are stored as null and read back from sum, bit for bit."""

from __future__ import annotations

import math
import struct
from datetime import date

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from lake import Lake, lake_relation
from lake.read import read_partition_file
from tests.lake.builders import ALL_TIME

DAY = date(2024, 3, 1)


def rollups(rows: list[tuple[int, float, float, float]]) -> pa.Table:
    """agg_1m rows of user 1 on DAY, one a minute: (count, sum, min, max)."""
    n = len(rows)
    return pa.table(
        {
            "user_id": pa.array([1] * n, pa.int32()),
            "date": pa.array([DAY] * n, pa.date32()),
            "metric": pa.array(["steps"] * n),
            "ts": pa.array(
                [1_709_251_200_000_000 + i * 60_000_000 for i in range(n)], pa.int64()
            ).cast(pa.timestamp("us", tz="UTC")),
            "count": pa.array([r[0] for r in rows], pa.int64()),
            "sum": pa.array([r[1] for r in rows], pa.float64()),
            "min": pa.array([r[2] for r in rows], pa.float64()),
            "max": pa.array([r[3] for r in rows], pa.float64()),
        }
    )


def bits(values: list[float]) -> list[bytes]:
    return [struct.pack("<d", v) for v in values]


EDGES = [
    (1, 72.5, 72.5, 72.5),  # one sample: min and max not stored
    (2, 5.0, 0.0, 5.0),  # steps 0 and 5: max = sum, min is not
    (2, 0.0, -0.0, 0.0),  # -0.0 is not 0.0 bit for bit: min kept
    (1, math.nan, math.nan, math.nan),  # NaN never equals itself: kept
    (3, 9.0, 2.0, 4.0),
]


def test_extremes_equal_to_sum_are_not_stored_and_read_back_exactly(lake: Lake) -> None:
    source = rollups(EDGES)
    lake.replace_days("agg_1m", source, [(1, DAY)])
    (stored_file,) = lake.files("agg_1m", [1], *ALL_TIME).files
    with lake.storage.open(stored_file.path) as handle:
        on_disk = pq.ParquetFile(handle).read()
    assert on_disk.column("min").to_pylist()[:3] == [None, 0.0, -0.0]
    assert on_disk.column("max").to_pylist()[:3] == [None, None, None]
    back = read_partition_file(lake.storage, "agg_1m", stored_file.path, (1, DAY))
    with duckdb.connect() as conn:
        files = lake.files("agg_1m", [1], *ALL_TIME)
        seen = lake_relation(conn, files, storage=lake.storage).to_arrow_table()
    for table in (back, seen):
        for name in ("sum", "min", "max"):
            assert bits(table.column(name).to_pylist()) == bits(source.column(name).to_pylist())
        assert (
            table.select(["ts", "count"]).to_pylist() == source.select(["ts", "count"]).to_pylist()
        )


def test_per_minute_rollups_take_less_than_half_the_bytes(lake: Lake) -> None:
    """One sample a minute: every bucket's min and max equal its sum."""
    values = [60.0 + (i * 7919 % 600) / 10 for i in range(1440)]
    lake.replace_days("agg_1m", rollups([(1, v, v, v) for v in values]), [(1, DAY)])
    (stored_file,) = lake.files("agg_1m", [1], *ALL_TIME).files
    with lake.storage.open(stored_file.path) as handle:
        on_disk = pq.ParquetFile(handle)
        group = on_disk.metadata.row_group(0)
        sizes = {
            group.column(i).path_in_schema: group.column(i).total_compressed_size
            for i in range(group.num_columns)
        }
    assert sizes["min"] + sizes["max"] < sizes["sum"] / 4
