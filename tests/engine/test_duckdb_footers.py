"""The engine's DuckDB keeps the Parquet footers it has read (parquet_metadata_cache, issue 13
point 2), and still reads a file rewritten in place as it is now. Real DuckDB, real files."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.lakeexec import connect_duckdb
from engine.settings import load_settings

COUNT_AND_SUM = "SELECT count(*), sum(v) FROM read_parquet($path)"


def test_footers_are_kept_and_a_file_rewritten_in_place_is_read_anew(tmp_path: Path) -> None:
    settings = load_settings({"STRATUM_HOME": str(tmp_path / "home")})
    duck = connect_duckdb(settings.memory, 256 * 2**20)
    cursor = duck.cursor()  # queries run on cursors: the setting is the database's
    setting = "SELECT value FROM duckdb_settings() WHERE name = 'parquet_metadata_cache'"
    assert cursor.execute(setting).fetchone() == ("true",)
    path = tmp_path / "day.parquet"
    pq.write_table(pa.table({"v": [1, 2, 3]}), path)
    params = {"path": str(path)}
    assert cursor.execute(COUNT_AND_SUM, params).fetchone() == (3, 6)
    assert cursor.execute(COUNT_AND_SUM, params).fetchone() == (3, 6)  # from the kept footer
    pq.write_table(pa.table({"v": [10, 20]}), path)  # same path: a footer of other row groups
    assert cursor.execute(COUNT_AND_SUM, params).fetchone() == (2, 30)
    duck.close()
