"""DuckDB reads a LakeFiles list with the tier's column names, order and types."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from lake import TIERS, Lake, LakeFiles, in_utc, lake_relation, lake_scan, scan_sql
from lake.duck import duckdb_types
from lake.layout import partition_columns, tier_schema
from tests.lake.builders import ALL_TIME, JAN1, days_from, tier_rows

EXPECTED_TYPES = {
    "raw": ["INTEGER", "DATE", "VARCHAR", "TIMESTAMP WITH TIME ZONE", "DOUBLE", "VARCHAR"],
    "agg_1h": ["INTEGER", "DATE", "VARCHAR", "TIMESTAMP WITH TIME ZONE"]
    + ["BIGINT", "DOUBLE", "DOUBLE", "DOUBLE", "VARCHAR"],
}
EXPECTED_TYPES["agg_1m"] = EXPECTED_TYPES["agg_1h"]
EXPECTED_TYPES["agg_1d"] = EXPECTED_TYPES["agg_1h"]


@pytest.mark.parametrize("tier", TIERS)
def test_relation_has_tier_schema_types(lake: Lake, tier: str) -> None:
    pairs = [(12, d) for d in days_from(date(2023, 12, 31), 2)]
    lake.replace_days(tier, tier_rows(tier, pairs), pairs)
    files = lake.files(tier, None, *ALL_TIME)
    with duckdb.connect() as conn:
        relation = lake_relation(conn, files, storage=lake.storage)
        assert relation.columns == tier_schema(tier).names
        assert [str(t) for t in relation.types] == EXPECTED_TYPES[tier]
        label = partition_columns(tier)[1]
        summary = relation.aggregate(f'min(user_id), min(date), max(date), min("{label}")')
        first = date(2023, 12, 31)
        expected_label = {
            "raw": "2023-12",
            "agg_1m": "2023-12",
            "agg_1h": "2023-12",
            "agg_1d": "2023",
        }
        assert summary.fetchall() == [(12, first, JAN1, expected_label[tier])]


def test_empty_file_list_gives_an_empty_typed_relation() -> None:
    empty = LakeFiles("agg_1h", 3, ())
    sql, params = scan_sql(empty)
    assert params == {}
    with duckdb.connect() as conn:
        relation = lake_relation(conn, empty)
        assert relation.columns == tier_schema("agg_1h").names
        assert relation.fetchall() == []
        assert conn.execute(f"SELECT count(*) FROM {sql}").fetchone() == (0,)


def test_scan_composes_with_other_named_parameters(tmp_path: Path) -> None:
    # A quote and a space in the root: paths are bound, never spliced into the SQL.
    lake = Lake(tmp_path / "it's a lake")
    pairs = [(1, JAN1), (2, JAN1)]
    lake.replace_days("raw", tier_rows("raw", pairs), pairs)
    sql, params = scan_sql(lake.files("raw", None, *ALL_TIME), param="raw_files")
    assert "it's" not in sql
    query = f"SELECT user_id, count(*) FROM {sql} WHERE metric = $metric GROUP BY 1 ORDER BY 1"
    with duckdb.connect() as conn:
        rows = conn.execute(query, {**params, "metric": "hr"}).fetchall()
    assert rows == [(1, 1440), (2, 1440)]


def test_parameter_name_must_be_an_identifier() -> None:
    with pytest.raises(ValueError, match="identifier"):
        scan_sql(LakeFiles("raw", 1, ()), param="x; DROP TABLE t")


def test_duckdb_types_cover_every_column() -> None:
    for tier in TIERS:
        assert list(duckdb_types(tier)) == tier_schema(tier).names


def test_lake_scan_ends_cleanly_when_a_result_is_left_unread(lake: Lake) -> None:
    pairs = [(u, d) for u in (1, 2) for d in days_from(JAN1, 2)]
    lake.replace_days("raw", tier_rows("raw", pairs), pairs)
    files = lake.files("raw", None, *ALL_TIME)
    with duckdb.connect() as conn:
        with lake_scan(conn, files, lake.storage) as (sql, params):
            result = conn.execute(f"SELECT * FROM {sql}", params or None)
            assert result.fetchone() is not None  # the rest stays unread
        # The connection is usable afterwards and the S3 dataset is gone.
        assert conn.execute("SELECT 1").fetchone() == (1,)
        names = conn.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
        assert not [n for (n,) in names if n.startswith("lake_files_")]


def test_in_utc_reaches_every_cursor_whatever_the_machine_zone() -> None:
    conn = duckdb.connect()
    try:
        conn.execute("SET GLOBAL TimeZone = 'Europe/Berlin'")  # as on a machine in Berlin
        cursor = in_utc(conn).cursor()  # a cursor starts from the global settings
        late = "SELECT date_trunc('day', TIMESTAMPTZ '2024-01-01 23:30:00+00') AS day"
        day = cursor.sql(late).to_arrow_table()["day"]
        assert day.type == pa.timestamp("us", tz="UTC")  # the answers' type: no cast needed
        assert day[0].as_py() == datetime(2024, 1, 1, tzinfo=UTC)  # Berlin's day: 2 January
    finally:
        conn.close()
