"""How DuckDB reads a ``LakeFiles`` list.

Partition columns are not stored inside the parquet files (Delta keeps them in the path), so
the files are read with ``hive_partitioning = true``. Left to itself DuckDB guesses the path
values' types (user_id BIGINT, year BIGINT), so ``hive_types`` pins them, and a projection
fixes column order and types to ``tier_schema(tier)``. File paths are bound as a parameter,
never spliced into SQL text.

DuckDB reads object storage only through its httpfs extension, which it downloads at first
use (not possible offline, nor wanted on a locked-down server). Files on S3 are read through
a pyarrow dataset over the exact file list instead, registered on the connection for the
duration of a query; DuckDB pushes projections and filters into it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from lake import extremes
from lake.layout import TS_TYPE, partition_columns, tier_schema
from lake.snapshot import LakeFiles
from lake.storage import LakeStorage

_DUCK_TYPES = {
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.date32(): "DATE",
    TS_TYPE: "TIMESTAMPTZ",
}
_PARAMETER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def in_utc(conn: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """`conn` and every cursor made from it work in UTC; returns `conn`.

    DuckDB takes its time zone from the machine's: date_trunc of a TIMESTAMPTZ buckets in
    local days (on a Europe/Berlin machine, 2024-01-01 23:30Z fell in the day of 2024-01-02),
    and Arrow results carry that zone (`Etc/UTC` even on a UTC machine, so every batch was
    cast to the answers' `UTC`). A cursor starts from the global settings: a plain SET on the
    connection does not reach it."""
    conn.execute("SET GLOBAL TimeZone = 'UTC'")
    return conn


def duckdb_types(tier: str) -> dict[str, str]:
    """Column name -> DuckDB type of a tier's rows as the scan returns them."""
    return {field.name: _DUCK_TYPES[field.type] for field in tier_schema(tier)}


def scan_sql(files: LakeFiles, param: str = "lake_files") -> tuple[str, dict[str, list[str]]]:
    """A parenthesised SELECT to use in a FROM clause, and the named parameters to bind.

    Example: ``sql, params = scan_sql(files)``;
    ``conn.execute(f"SELECT avg(value) FROM {sql} WHERE metric = $metric", {**params, ...})``.
    With no files the fragment is an empty, typed SELECT and ``params`` is empty.
    """
    if not _PARAMETER.fullmatch(param):
        raise ValueError(f"parameter name must be an identifier, got {param!r}")
    types = duckdb_types(files.tier)
    if not files.files:
        nulls = ", ".join(f'CAST(NULL AS {kind}) AS "{name}"' for name, kind in types.items())
        return f"(SELECT {nulls} WHERE false)", {}
    hive = ", ".join(f"'{name}': {types[name]}" for name in partition_columns(files.tier))
    columns = _projection(files.tier)
    source = f"read_parquet(${param}, hive_partitioning = true, hive_types = {{{hive}}})"
    # Identifiers and types come from tier_schema; the paths travel as a bound parameter.
    return f"(SELECT {columns} FROM {source})", {param: files.paths}  # noqa: S608


def _projection(tier: str) -> str:
    types = duckdb_types(tier)
    return ", ".join(
        f'CAST({extremes.sql(name)} AS {kind}) AS "{name}"' for name, kind in types.items()
    )


def arrow_dataset(files: LakeFiles, storage: LakeStorage) -> ds.Dataset:
    """A pyarrow dataset of exactly these files, partition columns parsed from their paths."""
    schema = tier_schema(files.tier)
    hive = pa.schema([schema.field(name) for name in partition_columns(files.tier)])
    return ds.dataset(
        [storage.fs_path(path) for path in files.paths],
        schema=schema,
        format="parquet",
        filesystem=storage.filesystem,
        partitioning=ds.partitioning(hive, flavor="hive"),
        partition_base_dir=storage.fs_path(storage.join(files.tier)),
    )


def _register(conn: duckdb.DuckDBPyConnection, files: LakeFiles, storage: LakeStorage) -> str:
    name = f"lake_files_{uuid.uuid4().hex}"
    conn.register(name, arrow_dataset(files, storage))
    return name


@contextmanager
def lake_scan(
    conn: duckdb.DuckDBPyConnection,
    files: LakeFiles,
    storage: LakeStorage,
    param: str = "lake_files",
) -> Iterator[tuple[str, dict[str, list[str]]]]:
    """``scan_sql`` for files on any storage, valid inside the ``with`` block on ``conn``."""
    if storage.is_local or not files.files:
        yield scan_sql(files, param)
        return
    name = _register(conn, files, storage)
    try:
        # The name is ours (uuid hex), never user text.
        yield f"(SELECT {_projection(files.tier)} FROM {name})", {}  # noqa: S608
    finally:
        _unregister(conn, name)


def _unregister(conn: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop the dataset; a result left unread over it is cancelled first (it cannot go on
    without it). A still-open Arrow reader keeps it until the connection closes."""
    try:
        conn.unregister(name)
    except duckdb.ResourceInUseException:
        conn.abort()
        with suppress(duckdb.ResourceInUseException):
            conn.unregister(name)


def lake_relation(
    conn: duckdb.DuckDBPyConnection,
    files: LakeFiles,
    param: str = "lake_files",
    storage: LakeStorage | None = None,
) -> duckdb.DuckDBPyRelation:
    """A DuckDB relation over the files, with ``tier_schema`` column names, order and types.

    Files on object storage stay registered on ``conn`` until it closes (the relation is
    lazy)."""
    if storage is not None and not storage.is_local and files.files:
        name = _register(conn, files, storage)
        return conn.sql(f"SELECT {_projection(files.tier)} FROM {name} AS lake_scan")  # noqa: S608
    sql, params = scan_sql(files, param)
    return conn.sql(f"SELECT * FROM {sql} AS lake_scan", params=params or None)  # noqa: S608
