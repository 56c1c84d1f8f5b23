"""How DuckDB reads a ``LakeFiles`` list.

Partition columns are not stored inside the parquet files (Delta keeps them in the path), so
the files are read with ``hive_partitioning = true``. Left to itself DuckDB guesses the path
values' types (user_id BIGINT, year BIGINT), so ``hive_types`` pins them, and a projection
fixes column order and types to ``tier_schema(tier)``. File paths are bound as a parameter,
never spliced into SQL text.
"""

from __future__ import annotations

import re

import duckdb
import pyarrow as pa

from lake.layout import TS_TYPE, partition_columns, tier_schema
from lake.snapshot import LakeFiles

_DUCK_TYPES = {
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.date32(): "DATE",
    TS_TYPE: "TIMESTAMPTZ",
}
_PARAMETER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
    columns = ", ".join(f'CAST("{name}" AS {kind}) AS "{name}"' for name, kind in types.items())
    source = f"read_parquet(${param}, hive_partitioning = true, hive_types = {{{hive}}})"
    # Identifiers and types come from tier_schema; the paths travel as a bound parameter.
    return f"(SELECT {columns} FROM {source})", {param: files.paths}  # noqa: S608


def lake_relation(
    conn: duckdb.DuckDBPyConnection, files: LakeFiles, param: str = "lake_files"
) -> duckdb.DuckDBPyRelation:
    """A DuckDB relation over the files, with ``tier_schema`` column names, order and types."""
    sql, params = scan_sql(files, param)
    return conn.sql(f"SELECT * FROM {sql} AS lake_scan", params=params or None)  # noqa: S608
