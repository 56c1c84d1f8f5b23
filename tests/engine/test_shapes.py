"""Batches with the columns a query fixes added as constants (shapes.with_constants)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from engine.shapes import RAW, ROLLUP, TS, _ConstantColumns, constant, with_constants


def _expected(schema: pa.Schema, user_id: int, metric: str, rest: pa.RecordBatch) -> pa.RecordBatch:
    rows = rest.num_rows
    columns = [pa.array([user_id] * rows, pa.int32()), pa.array([metric] * rows, pa.string())]
    columns += [rest.column(i).cast(field.type) for i, field in enumerate(list(schema)[2:])]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


@pytest.mark.parametrize("rows", [0, 1, 3, 131_072])
@pytest.mark.parametrize("metric", ["heart_rate", "spo2", "höhe_µ"])
def test_raw_rows_get_the_series_as_constant_columns(rows: int, metric: str) -> None:
    rest = pa.record_batch(
        {
            "ts": pa.array(range(rows), pa.timestamp("us", tz="UTC")),
            "value": pa.array([float(i) / 3 for i in range(rows)]),
        }
    )
    batch = with_constants(rest, RAW, {"user_id": 2_000_000_001, "metric": metric})
    batch.validate(full=True)
    assert batch.equals(_expected(RAW, 2_000_000_001, metric, rest))
    assert batch.schema.equals(RAW, check_metadata=True)


def test_columns_in_another_type_are_cast_to_the_answers() -> None:
    # DuckDB may hand the timestamps in another zone's type, the count as int32.
    rest = pa.record_batch(
        {
            "ts": pa.array([0, 3_600_000_000], pa.timestamp("us", tz="Europe/Berlin")),
            "count": pa.array([60, 59], pa.int32()),
            "sum": pa.array([3600.0, 3540.0]),
            "min": pa.array([50.0, 51.0]),
            "max": pa.array([70.0, 71.0]),
            "avg": pa.array([60.0, 60.0]),
        }
    )
    batch = with_constants(rest, ROLLUP, {"user_id": 7, "metric": "steps"})
    assert batch.schema.equals(ROLLUP, check_metadata=True)
    assert batch.column(2).type == TS
    assert batch.to_pylist()[1] == {
        "user_id": 7,
        "metric": "steps",
        "ts": batch.column(2)[1].as_py(),
        "count": 59,
        "sum": 3540.0,
        "min": 51.0,
        "max": 71.0,
        "avg": 60.0,
    }
    assert batch.equals(_expected(ROLLUP, 7, "steps", rest))


def test_only_the_fixed_columns_are_added() -> None:
    # Several participants, one metric: user_id comes from the scan.
    rest = pa.record_batch(
        {
            "user_id": pa.array([1, 1, 2], pa.int32()),
            "ts": pa.array([0, 1, 0], pa.timestamp("us", tz="UTC")),
            "value": pa.array([1.0, 2.0, 3.0]),
        }
    )
    batch = with_constants(rest, RAW, {"metric": "spo2"})
    assert batch.schema.equals(RAW, check_metadata=True)
    assert batch.column("user_id").to_pylist() == [1, 1, 2]
    assert batch.column("metric").to_pylist() == ["spo2"] * 3
    assert batch.column("value").to_pylist() == [1.0, 2.0, 3.0]


def test_a_series_constant_columns_are_made_once_for_all_its_batches() -> None:
    # A participant-year comes as ~13 batches of ~37k rows: each used to get its own
    # user_id and metric columns, made afresh (~1 ms of the answer's ~11).
    first = constant("constant_cache_metric", pa.string(), 40_000)
    again = constant("constant_cache_metric", pa.string(), 36_000)
    assert again.buffers()[2].address == first.buffers()[2].address
    assert again.to_pylist() == ["constant_cache_metric"] * 36_000
    ids = constant(1_234_567, pa.int32(), 40_000)
    assert constant(1_234_567, pa.int32(), 39_999).buffers()[1].address == ids.buffers()[1].address


def test_a_longer_batch_grows_the_kept_column_and_stays_exact() -> None:
    short = constant(7_654_321, pa.int32(), 10)
    long = constant(7_654_321, pa.int32(), 100_000)
    assert short.to_pylist() == [7_654_321] * 10
    assert long.to_pylist() == [7_654_321] * 100_000
    long.validate(full=True)


def test_kept_columns_stay_within_their_bytes() -> None:
    columns = _ConstantColumns(limit_bytes=2**20, longest=131_072)
    for user_id in range(100):  # a cohort's participants, 128k rows each (512 KiB per column)
        column = columns.get(user_id, pa.int32(), 131_072)
        assert column.to_pylist()[::4096] == [user_id] * 32
    assert columns.kept_bytes() <= 2**20
    # Longer than any batch: made for its answer alone, never kept.
    assert len(columns.get(1, pa.int32(), 131_073)) == 131_073
    assert columns.kept_bytes() <= 2**20
