"""The engine's DuckDB reads lake files on its worker threads unless told otherwise
(STRATUM_DUCKDB_ASYNC_THREADS, issue 13 point 2). Real DuckDB, real files."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import ConfigurationError
from engine.lakeexec import connect_duckdb
from engine.settings import load_settings

ASYNC_THREADS = "SELECT current_setting('async_threads')"


def _threads() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/task"))


def test_no_async_io_threads_by_default(tmp_path: Path) -> None:
    """DuckDB 2 starts 8 async I/O threads per database; each woke ~3 times a request, and a
    participant-year as Arrow over HTTP took 0.4-1.8 ms longer with them on two cores."""
    settings = load_settings({"STRATUM_HOME": str(tmp_path / "home")})
    assert settings.memory.duckdb_async_threads == 0
    before = _threads()
    duck = connect_duckdb(settings.memory, 256 * 2**20)
    assert duck.execute(ASYNC_THREADS).fetchone() == (0,)
    # The workers only: `threads` counts the calling thread.
    assert _threads() - before == settings.memory.duckdb_threads - 1
    path = tmp_path / "day.parquet"
    pq.write_table(pa.table({"v": [1, 2, 3]}), path)
    read = duck.cursor().execute("SELECT sum(v) FROM read_parquet($p)", {"p": str(path)})
    assert read.fetchone() == (6,)
    duck.close()


def test_async_io_threads_when_asked(tmp_path: Path) -> None:
    settings = load_settings(
        {"STRATUM_HOME": str(tmp_path / "home"), "STRATUM_DUCKDB_ASYNC_THREADS": "4"}
    )
    duck = connect_duckdb(settings.memory, 256 * 2**20)
    assert duck.execute(ASYNC_THREADS).fetchone() == (4,)
    duck.close()
    with pytest.raises(ConfigurationError, match="STRATUM_DUCKDB_ASYNC_THREADS"):
        load_settings({"STRATUM_HOME": str(tmp_path), "STRATUM_DUCKDB_ASYNC_THREADS": "-1"})
