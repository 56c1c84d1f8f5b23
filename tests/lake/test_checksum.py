"""day_checksums: order-independent, bit-exact, stable across processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from lake import day_checksums
from lake.checksum import CHECKSUM_MODULUS, merge_checksums
from tests.lake.builders import JAN1, days_from, tier_rows

PAIRS = [(u, d) for u in (1, 2) for d in days_from(JAN1, 3)]


def with_value(table: pa.Table, row: int, column: str, value: object) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    index = table.schema.get_field_index(column)
    return table.set_column(index, column, pa.array(values, table.schema.field(column).type))


def test_counts_rows_per_user_day_in_range() -> None:
    source = tier_rows("raw", PAIRS)
    result = day_checksums("raw", source)
    assert set(result) == set(PAIRS)
    assert {rows for rows, _ in result.values()} == {2 * 1440}
    assert all(0 <= checksum < CHECKSUM_MODULUS for _, checksum in result.values())
    assert day_checksums("raw", source.slice(0, 0)) == {}


def test_independent_of_row_order_and_chunking() -> None:
    source = tier_rows("raw", PAIRS)
    order = np.random.default_rng(3).permutation(source.num_rows)
    shuffled = source.take(pa.array(order))
    rechunked = pa.Table.from_batches(shuffled.to_batches(max_chunksize=1000))
    assert day_checksums("raw", rechunked) == day_checksums("raw", source)


@pytest.mark.parametrize(
    ("column", "change"),
    [
        ("value", lambda v: float(np.nextafter(v, np.inf))),  # one ulp
        ("ts", lambda t: t + timedelta(microseconds=1)),
        ("metric", lambda m: m + "x"),
    ],
)
def test_sensitive_to_any_changed_field(column: str, change: Callable[[Any], Any]) -> None:
    source = tier_rows("raw", PAIRS)
    row = 1440 * 2 + 17  # a row of the second user-day
    changed = with_value(source, row, column, change(source.column(column)[row].as_py()))
    before, after = day_checksums("raw", source), day_checksums("raw", changed)
    day = (source["user_id"][row].as_py(), source["date"][row].as_py())
    assert before[day][0] == after[day][0]
    assert before[day][1] != after[day][1]
    assert {k: v for k, v in before.items() if k != day} == {
        k: v for k, v in after.items() if k != day
    }


def test_float_bits_and_nulls_are_exact() -> None:
    source = tier_rows("raw", [(1, JAN1)], metrics=("hr",))
    zero = with_value(source, 0, "value", 0.0)
    negative_zero = with_value(source, 0, "value", -0.0)
    null = with_value(source, 0, "value", None)
    checksums = {day_checksums("raw", t)[(1, JAN1)][1] for t in (zero, negative_zero, null)}
    assert len(checksums) == 3


def test_agg_tiers_cover_every_measure() -> None:
    source = tier_rows("agg_1h", [(1, JAN1)], metrics=("hr",))
    base = day_checksums("agg_1h", source)
    for column, value in [("count", 1000), ("sum", 1.5), ("min", -1.0), ("max", 1e9)]:
        assert day_checksums("agg_1h", with_value(source, 5, column, value)) != base


def test_partial_results_merge_to_the_whole() -> None:
    source = tier_rows("raw", PAIRS)
    halves = [source.slice(0, 5000), source.slice(5000)]
    merged = merge_checksums(day_checksums("raw", half) for half in halves)
    assert merged == day_checksums("raw", source)


GOLDEN_SCRIPT = """
import datetime as dt
import pyarrow as pa
from lake import day_checksums
table = pa.table({
    "user_id": pa.array([5, 5], pa.int32()),
    "date": pa.array([dt.date(2024, 1, 1)] * 2, pa.date32()),
    "metric": ["hr", "steps"],
    "ts": pa.array([1704067200000000, 1704067260000000]).cast(pa.timestamp("us", tz="UTC")),
    "value": [61.5, 12.0],
})
print(day_checksums("raw", table)[(5, dt.date(2024, 1, 1))])
"""
# Changing the checksum definition invalidates every verification record: do it deliberately.
GOLDEN = "(2, 8279189434445862583)"


def test_stable_across_processes_and_versions() -> None:
    runs = [
        subprocess.run(
            [sys.executable, "-c", GOLDEN_SCRIPT],
            check=True,
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[2],
        ).stdout.strip()
        for _ in range(2)
    ]
    assert runs == [GOLDEN, GOLDEN]
