"""Ingest against a real PostgreSQL: files land whole or not at all, with row-level errors."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import IngestRejected
from sync import readers
from sync.ingest import ingest_files, last_per_key

HEADER = "ts,user_id,metric,value\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def raw_rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT user_id, metric, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), "
            "value FROM raw_data ORDER BY 1, 2, 3"
        ).fetchall()


def changed_days(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT user_id, day::text FROM day_state WHERE change_seq > refreshed_seq "
            "ORDER BY 1, 2"
        ).fetchall()


def test_csv_lands_and_marks_each_utc_day(flavour_url: str, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.csv",
        HEADER
        + "2024-01-01T23:59:59Z,1,heart_rate,61\n"
        + "2024-01-02T01:30:00+02:00,1,heart_rate,62\n"  # 2024-01-01 23:30 UTC
        + "2024-01-02T00:00:00Z,2,steps,12\n",
    )
    result = ingest_files(flavour_url, [path])
    assert result.rows == 3
    assert raw_rows(flavour_url) == [
        (1, "heart_rate", "2024-01-01 23:30:00", 62.0),
        (1, "heart_rate", "2024-01-01 23:59:59", 61.0),
        (2, "steps", "2024-01-02 00:00:00", 12.0),
    ]
    assert changed_days(flavour_url) == [(1, "2024-01-01"), (2, "2024-01-02")]


def test_redelivery_replaces_and_never_duplicates(flavour_url: str, tmp_path: Path) -> None:
    first = write(tmp_path, "a.csv", HEADER + "2024-01-01T00:00:00Z,1,heart_rate,60\n")
    again = write(
        tmp_path,
        "b.csv",
        HEADER
        + "2024-01-01T00:00:00Z,1,heart_rate,70\n"
        + "2024-01-01T00:00:01Z,1,heart_rate,71\n"
        + "2024-01-01T00:00:01Z,1,heart_rate,72\n",  # same key twice: the last copy wins
    )
    ingest_files(flavour_url, [first])
    ingest_files(flavour_url, [again])
    assert raw_rows(flavour_url) == [
        (1, "heart_rate", "2024-01-01 00:00:00", 70.0),
        (1, "heart_rate", "2024-01-01 00:00:01", 72.0),
    ]


def test_quoted_csv_header_and_fields(flavour_url: str, tmp_path: Path) -> None:
    path = write(
        tmp_path, "q.csv", '"ts","user_id","metric","value"\n"2024-01-01T00:00:00Z",1,"steps",3\n'
    )
    assert ingest_files(flavour_url, [path]).rows == 1


def test_parquet_and_ndjson_are_accepted(flavour_url: str, tmp_path: Path) -> None:
    table = pa.table(
        {
            "ts": pa.array([1_704_067_200_000_000], pa.timestamp("us", tz="UTC")),
            "user_id": pa.array([3], pa.int64()),
            "metric": ["spo2"],
            "value": [97.5],
        }
    )
    pq.write_table(table, tmp_path / "a.parquet")
    ndjson = write(
        tmp_path,
        "b.ndjson",
        '{"ts": "2024-01-01T00:01:00Z", "user_id": 3, "metric": "spo2", "value": 96}\n'
        '{"ts": "2024-01-01T00:02:00Z", "user_id": "3", "metric": "spo2", "value": "95.5"}\n',
    )
    result = ingest_files(flavour_url, [tmp_path / "a.parquet", ndjson])
    assert result.files == 2 and result.rows == 3
    assert [r[3] for r in raw_rows(flavour_url)] == [97.5, 96.0, 95.5]


BAD_CSV = [
    ("2024-01-01T00:00:00Z,1,heart_rte,60", 2, "unknown metric 'heart_rte'; valid metrics: "),
    ("2024-01-01 00:00:00,1,heart_rate,60", 2, "has no time zone"),
    ("yesterday Z,1,heart_rate,60", 2, "ts 'yesterday Z' is not an ISO 8601 timestamp"),
    ("2024-13-01T00:00:00Z,1,heart_rate,60", 2, "is not an ISO 8601 timestamp"),
    ("2024-01-01T00:00:00Z,1,heart_rate,sixty", 2, "value 'sixty' is not a number"),
    ("2024-01-01T00:00:00Z,1,heart_rate,nan", 2, "not a finite number"),
    ("2024-01-01T00:00:00Z,one,heart_rate,60", 2, "user_id 'one' is not an integer"),
    ("2024-01-01T00:00:00Z,-4,heart_rate,60", 2, "user_id must be >= 0"),
    ("2024-01-01T00:00:00Z,1,,60", 2, "missing value for column metric"),
]


@pytest.mark.parametrize(("bad_line", "row", "reason"), BAD_CSV)
def test_bad_row_refuses_the_whole_file(
    flavour_url: str, tmp_path: Path, bad_line: str, row: int, reason: str
) -> None:
    path = write(tmp_path, "bad.csv", HEADER + "2024-01-01T00:00:00Z,1,steps,5\n" + bad_line + "\n")
    with pytest.raises(IngestRejected) as caught:
        ingest_files(flavour_url, [path])
    assert caught.value.row == row
    assert reason in caught.value.reason
    assert str(path) in caught.value.message
    assert raw_rows(flavour_url) == []
    assert changed_days(flavour_url) == []


def test_unknown_metric_lists_every_valid_one(flavour_url: str, tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", HEADER + "2024-01-01T00:00:00Z,1,pulse,60\n")
    with pytest.raises(IngestRejected) as caught:
        ingest_files(flavour_url, [path])
    for name in ("heart_rate", "steps", "spo2", "hrv", "respiratory_rate", "skin_temperature"):
        assert name in caught.value.reason


def test_missing_column_is_named(flavour_url: str, tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", "ts,user_id,value\n2024-01-01T00:00:00Z,1,60\n")
    with pytest.raises(IngestRejected, match="missing column.*metric"):
        ingest_files(flavour_url, [path])


@pytest.mark.parametrize(("delimiter", "shown"), [(";", "';'"), ("\t", "'\\t'"), ("|", "'|'")])
def test_another_delimiter_is_named(
    warm_url: str, tmp_path: Path, delimiter: str, shown: str
) -> None:
    # A spreadsheet export in a semicolon locale: every column looked missing, with no hint.
    line = delimiter.join(["ts", "user_id", "metric", "value"])
    path = write(
        tmp_path,
        "export.csv",
        f"{line}\n2024-01-01T00:00:00Z{delimiter}1{delimiter}steps{delimiter}60\n",
    )
    with pytest.raises(IngestRejected) as caught:
        ingest_files(warm_url, [path])
    assert caught.value.message == (
        f"{path}: missing column(s) ts, user_id, metric, value; required: ts, user_id, metric, "
        f"value; the file seems to use {shown} as delimiter; stratum reads comma-separated CSV"
    )


def test_a_byte_order_mark_is_not_part_of_the_header(warm_url: str, tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "2024-01-01T00:00:00Z,1,steps,60\n").encode())
    assert ingest_files(warm_url, [path]).rows == 1


def test_zoneless_parquet_timestamps_are_refused(flavour_url: str, tmp_path: Path) -> None:
    table = pa.table(
        {
            "ts": pa.array([0], pa.timestamp("us")),
            "user_id": [1],
            "metric": ["steps"],
            "value": [1.0],
        }
    )
    pq.write_table(table, tmp_path / "naive.parquet")
    with pytest.raises(IngestRejected, match="without time zone"):
        ingest_files(flavour_url, [tmp_path / "naive.parquet"])
    assert raw_rows(flavour_url) == []


def test_bad_row_in_a_later_batch_leaves_nothing(flavour_url: str, tmp_path: Path) -> None:
    good = "".join(
        f"2024-01-01T00:{m:02d}:{s:02d}Z,1,heart_rate,60\n" for m in range(20) for s in range(60)
    )
    # Small blocks: the 1,200 good rows arrive in several batches before the bad one.
    good_only = write(tmp_path, "good.csv", HEADER + good)
    assert len(list(readers.read_validated(good_only, csv_block_bytes=4096))) > 1
    path = write(tmp_path, "late.csv", HEADER + good + "2024-01-01T01:00:00Z,1,heart_rate,x\n")
    with pytest.raises(IngestRejected) as caught:
        ingest_files(flavour_url, [path], csv_block_bytes=4096)
    assert caught.value.row == 1201
    assert raw_rows(flavour_url) == []


def test_ndjson_bad_value_names_the_row(flavour_url: str, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.ndjson",
        '{"ts": "2024-01-01T00:00:00Z", "user_id": 1, "metric": "steps", "value": 1}\n'
        '{"ts": "2024-01-01T00:01:00Z", "user_id": 1, "metric": "steps"}\n',
    )
    with pytest.raises(IngestRejected) as caught:
        ingest_files(flavour_url, [path])
    assert caught.value.row == 2 and "missing value for column value" in caught.value.reason


def test_unknown_file_type_and_missing_file(flavour_url: str, tmp_path: Path) -> None:
    with pytest.raises(IngestRejected, match="unknown file type"):
        ingest_files(flavour_url, [write(tmp_path, "a.xlsx", "x")])
    with pytest.raises(IngestRejected, match="no such file"):
        ingest_files(flavour_url, [tmp_path / "absent.csv"])


def test_last_per_key_sorts_by_key_and_keeps_the_last_copy() -> None:
    rows = [  # (ts seconds, user, metric, value), in delivery order
        (5, 2, "steps", 1.0),
        (1, 1, "steps", 2.0),
        (1, 1, "heart_rate", 3.0),
        (5, 2, "steps", 4.0),  # a later copy of the first row: it wins
        (0, 1, "steps", 5.0),
        (1, 1, "heart_rate", 6.0),
        (1, 1, "heart_rate", 7.0),
    ]
    table = pa.table(
        {
            "ts": pa.array([r[0] * 1_000_000 for r in rows], pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "user_id": pa.array([r[1] for r in rows], pa.int32()),
            "metric": [r[2] for r in rows],
            "value": [r[3] for r in rows],
        }
    )
    kept = last_per_key(table).to_pylist()
    assert [(r["user_id"], r["metric"], r["ts"].second, r["value"]) for r in kept] == [
        (1, "heart_rate", 1, 7.0),
        (1, "steps", 0, 5.0),
        (1, "steps", 1, 2.0),
        (2, "steps", 5, 4.0),
    ]
