"""Cohort tables to one file: Parquet, CSV or NDJSON (`stratum generate --out`, the bench).

Text formats carry `ts` as ISO 8601 UTC with 'Z', rendered as the API renders it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from engine.errors import InvalidParameter
from engine.timestamps import iso_utc, string_bytes
from sync.generate import COHORT_SCHEMA


def write_cohort(path: Path, tables: Iterable[pa.Table]) -> int:
    """Write the tables to one file, format by extension; returns the rows written.

    .parquet (zstd), .csv (header; ts as ISO 8601 UTC with 'Z'), .ndjson/.jsonl (one object
    per line). The file appears whole or not at all (written aside, then renamed).
    """
    path = Path(path)
    writer = _WRITERS.get(path.suffix.lower())
    if writer is None:
        valid = ", ".join(sorted(_WRITERS))
        raise InvalidParameter("out", f"unsupported file extension {path.suffix!r}; valid: {valid}")
    partial = path.with_name(f".{path.name}.partial")
    try:
        rows = writer(partial, (_conform(t) for t in tables))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return rows


def _conform(table: pa.Table) -> pa.Table:
    if table.schema != COHORT_SCHEMA:
        table = table.select(COHORT_SCHEMA.names).cast(COHORT_SCHEMA)
    for name in ("ts", "user_id", "metric"):
        if table.column(name).null_count:
            raise ValueError(f"cohort tables must not have null {name}")
    return table


def _write_parquet(path: Path, tables: Iterator[pa.Table]) -> int:
    rows = 0
    with pq.ParquetWriter(path, COHORT_SCHEMA, compression="zstd") as writer:
        for table in tables:
            writer.write_table(table)
            rows += table.num_rows
    return rows


def _write_csv(path: Path, tables: Iterator[pa.Table]) -> int:
    rows = 0
    schema = COHORT_SCHEMA.set(0, pa.field("ts", pa.string()))
    with pcsv.CSVWriter(path, schema) as writer:
        for table in tables:
            text = table.set_column(0, "ts", iso_utc(table.column("ts")))
            writer.write_table(text.cast(schema))
            rows += table.num_rows
    return rows


def _write_ndjson(path: Path, tables: Iterator[pa.Table]) -> int:
    rows = 0
    with open(path, "wb") as out:
        for table in tables:
            if table.num_rows == 0:
                continue
            table = table.combine_chunks()
            value = table.column("value").chunk(0)
            value_text = pc.if_else(pc.is_finite(value), pc.cast(value, pa.string()), "null")
            # Few wide pieces: pyarrow joins arrays fast but broadcasts each scalar slowly.
            lines = pc.binary_join_element_wise(
                iso_utc(table.column("ts"), prefix='{"ts":"', suffix='","user_id":'),
                _user_metric_json(
                    table.column("user_id").chunk(0), table.column("metric").chunk(0)
                ),
                pc.fill_null(value_text, "null"),
                "}\n",
                "",  # the separator
            )
            out.write(string_bytes(lines))
            rows += table.num_rows
    return rows


_WRITERS: dict[str, Callable[[Path, Iterator[pa.Table]], int]] = {
    ".parquet": _write_parquet,
    ".csv": _write_csv,
    ".ndjson": _write_ndjson,
    ".jsonl": _write_ndjson,
}


def _user_metric_json(user_id: pa.Array, metric: pa.Array) -> pa.Array:
    """'<user_id>,"metric":<json string>,"value":' per row.

    A table holds few distinct (user, metric) pairs, so encode those in Python and take.
    """
    users, metrics = pc.unique(user_id), pc.unique(metric)
    user_index = pc.index_in(user_id, users).to_numpy(zero_copy_only=False).astype(np.int64)
    metric_index = pc.index_in(metric, metrics).to_numpy(zero_copy_only=False)
    pairs = [
        f'{"null" if u is None else u},"metric":{"null" if m is None else json.dumps(m)},"value":'
        for u in users.to_pylist()
        for m in metrics.to_pylist()
    ]
    return pc.take(pa.array(pairs, pa.string()), user_index * len(metrics) + metric_index)
