"""Ingest refuses what it would otherwise store wrong: epoch numbers and dates as `ts`,
booleans as values, ragged CSV rows, duplicate columns, pathological lines."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import IngestRejected
from sync.readers import read_validated

HEADER = "ts,user_id,metric,value\n"
ROW = "2024-01-01T00:00:00Z,1,heart_rate,60\n"
JAN_1 = datetime(2024, 1, 1, tzinfo=UTC)
JAN_1_S = int(JAN_1.timestamp())


def rows(path: Path, **options: object) -> list[dict[str, object]]:
    return [row for table in read_validated(path, **options) for row in table.to_pylist()]  # type: ignore[arg-type]


def refusal(path: Path, **options: object) -> IngestRejected:
    with pytest.raises(IngestRejected) as caught:
        rows(path, **options)
    return caught.value


def parquet(tmp_path: Path, ts: pa.Array, value: pa.Array | None = None) -> Path:
    path = tmp_path / "a.parquet"
    table = pa.table(
        {
            "ts": ts,
            "user_id": pa.array([1] * len(ts), pa.int32()),
            "metric": ["heart_rate"] * len(ts),
            "value": value if value is not None else pa.array([60.0] * len(ts)),
        }
    )
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize(
    ("ts", "words"),
    [
        (pa.array([JAN_1_S], pa.int64()), ["int64", "--ts-unit"]),
        (pa.array([JAN_1_S], pa.int32()), ["int32", "--ts-unit"]),
        (pa.array([date(2024, 1, 1)], pa.date32()), ["date32", "time of day"]),
        (pa.array([1.7e9], pa.float64()), ["double", "timestamp"]),
        (pa.array([True], pa.bool_()), ["bool"]),
    ],
    ids=["int64 seconds", "int32", "date32", "float", "bool"],
)
def test_parquet_ts_must_be_a_zoned_timestamp_or_text(
    tmp_path: Path, ts: pa.Array, words: list[str]
) -> None:
    error = refusal(parquet(tmp_path, ts))
    assert "column ts" in error.reason
    for word in words:
        assert word in error.reason, (word, error.reason)


@pytest.mark.parametrize(
    ("unit", "epoch"),
    [("s", JAN_1_S), ("ms", JAN_1_S * 1000), ("us", JAN_1_S * 1_000_000)],
)
def test_ts_unit_reads_integer_epochs(tmp_path: Path, unit: str, epoch: int) -> None:
    path = parquet(tmp_path, pa.array([epoch], pa.int64()))
    assert rows(path, ts_unit=unit)[0]["ts"] == JAN_1
    csv_path = tmp_path / "a.csv"
    csv_path.write_text(HEADER + f"{epoch},1,heart_rate,60\n")
    assert rows(csv_path, ts_unit=unit)[0]["ts"] == JAN_1


def test_ts_unit_refuses_what_is_not_an_integer_epoch(tmp_path: Path) -> None:
    csv_path = tmp_path / "a.csv"
    csv_path.write_text(HEADER + f"{JAN_1_S},1,heart_rate,60\n" + ROW)
    error = refusal(csv_path, ts_unit="s")
    assert error.row == 2 and "epoch" in error.reason
    huge = parquet(tmp_path, pa.array([2**62], pa.int64()))
    assert "out of range" in refusal(huge, ts_unit="s").reason
    zoned = parquet(tmp_path, pa.array([JAN_1], pa.timestamp("us", tz="UTC")))
    assert "--ts-unit" in refusal(zoned, ts_unit="s").reason


def test_boolean_values_are_refused(tmp_path: Path) -> None:
    path = parquet(tmp_path, pa.array([JAN_1], pa.timestamp("us", tz="UTC")), pa.array([True]))
    error = refusal(path)
    assert "column value" in error.reason and "bool" in error.reason
    ndjson = tmp_path / "a.ndjson"
    ndjson.write_text(
        '{"ts": "2024-01-01T00:00:00Z", "user_id": 1, "metric": "steps", "value": true}\n'
    )
    assert refusal(ndjson).row == 1


def test_integer_values_are_still_numbers(tmp_path: Path) -> None:
    path = parquet(tmp_path, pa.array([JAN_1], pa.timestamp("us", tz="UTC")), pa.array([7]))
    assert rows(path)[0]["value"] == 7.0


@pytest.mark.parametrize(
    ("bad", "fields"),
    [("2024-01-01T00:01:00Z,1,heart_rate", 3), ("2024-01-01T00:01:00Z,1,heart_rate,60,7", 5)],
)
def test_a_ragged_csv_row_is_named(tmp_path: Path, bad: str, fields: int) -> None:
    path = tmp_path / "a.csv"
    path.write_text(HEADER + ROW * 3 + bad + "\n" + ROW)
    error = refusal(path)
    assert error.row == 4, error
    assert f"{fields} fields" in error.reason and "4" in error.reason


def test_a_ragged_row_in_a_later_block_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(HEADER + ROW * 500 + "2024-01-01T00:01:00Z,1\n")
    assert refusal(path, csv_block_bytes=4096).row == 501


def test_duplicate_columns_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("ts,user_id,metric,value,value\n2024-01-01T00:00:00Z,1,heart_rate,60,61\n")
    assert "value" in refusal(path).reason and "more than once" in refusal(path).reason
    table = pa.Table.from_arrays(
        [pa.array([JAN_1]), pa.array([1]), pa.array(["steps"]), pa.array([1.0]), pa.array([2.0])],
        names=["ts", "user_id", "metric", "value", "value"],
    )
    pq.write_table(table, tmp_path / "a.parquet")
    assert "more than once" in refusal(tmp_path / "a.parquet").reason


def test_a_pathological_first_line_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("ts,user_id,metric,value" + ",x" * 50_000 + "\n" + ROW)
    error = refusal(path, csv_block_bytes=4096)
    assert "header" in error.reason and "4096" in error.reason


def test_a_line_longer_than_a_block_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(HEADER + ROW + "2024-01-01T00:00:00Z,1,heart_rate," + "6" * 10_000 + "\n")
    error = refusal(path, csv_block_bytes=4096)
    assert "longer than" in error.reason and "4096" in error.reason


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + ROW).encode())
    assert rows(path)[0]["ts"] == JAN_1
