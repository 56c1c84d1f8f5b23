"""Read ingest files (CSV, Parquet, NDJSON) into validated Arrow batches.

Every batch comes out with the warm store's exact types (ts timestamptz, user_id int32, metric
string, value float64) or the file is refused with its row number and the reason. Readers
stream in batches, so a file larger than memory is still checked row by row.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from engine.errors import IngestRejected
from engine.registry import metric_names

COLUMNS = ("ts", "user_id", "metric", "value")
RAW_SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        ("user_id", pa.int32()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)
BATCH_ROWS = 1 << 20
CSV_BLOCK_BYTES = 64 << 20
_ZONE_SUFFIX = r"(Z|z|[+-]\d\d(:?\d\d)?)$"
FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "ndjson",
}


def file_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise IngestRejected(
            str(path), None, f"unknown file type {path.suffix!r}; use one of {sorted(FORMATS)}"
        )
    return fmt


def read_validated(path: Path, csv_block_bytes: int = CSV_BLOCK_BYTES) -> Iterator[pa.Table]:
    """Yield validated batches of `path`; raise IngestRejected at the first bad row.

    `csv_block_bytes`: how much CSV text each batch holds.
    """
    if not path.is_file():
        raise IngestRejected(str(path), None, "no such file")
    fmt = file_format(path)
    if fmt == "csv":
        batches = _csv_batches(path, csv_block_bytes)
    else:
        batches = {"parquet": _parquet_batches, "ndjson": _ndjson_batches}[fmt](path)
    first_row = 1
    for batch in batches:
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        yield _validate(table, str(path), first_row)
        first_row += table.num_rows


def _require_columns(names: list[str], file: str, hint: str = "") -> None:
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise IngestRejected(
            file,
            None,
            f"missing column(s) {', '.join(missing)}; required: {', '.join(COLUMNS)}{hint}",
        )


def _delimiter_hint(header_line: str) -> str:
    """Why a header lacks every column when it is split at another delimiter."""
    for delimiter in (";", "\t", "|"):
        if set(COLUMNS) <= {name.strip() for name in header_line.split(delimiter)}:
            return (
                f"; the file seems to use {delimiter!r} as delimiter; stratum reads "
                "comma-separated CSV"
            )
    return ""


def _csv_batches(path: Path, block_bytes: int) -> Iterator[pa.RecordBatch]:
    # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first name.
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        header_line = handle.readline()
    header = next(csv.reader([header_line]), [])
    _require_columns([h.strip() for h in header], str(path), _delimiter_hint(header_line))
    # Everything as text: we convert and report errors ourselves, with the row number.
    reader = pa_csv.open_csv(
        path,
        read_options=pa_csv.ReadOptions(block_size=block_bytes),
        convert_options=pa_csv.ConvertOptions(
            column_types={c: pa.string() for c in COLUMNS},
            include_columns=list(COLUMNS),
            strings_can_be_null=True,  # an empty field is a missing value
            null_values=[""],
        ),
    )
    try:
        yield from reader
    except pa.ArrowInvalid as exc:
        raise IngestRejected(str(path), None, f"malformed CSV: {exc}") from None


def _parquet_batches(path: Path) -> Iterator[pa.RecordBatch]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise IngestRejected(str(path), None, f"not a readable Parquet file: {exc}") from None
    schema = parquet.schema_arrow
    _require_columns(schema.names, str(path))
    ts_type = schema.field("ts").type
    if pa.types.is_timestamp(ts_type) and ts_type.tz is None:
        raise IngestRejected(
            str(path),
            None,
            "column ts is a timestamp without time zone; store it with a zone (UTC)",
        )
    yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=list(COLUMNS))


def _ndjson_batches(path: Path) -> Iterator[pa.RecordBatch]:
    con = duckdb.connect()
    try:
        # VARCHAR columns: numbers arrive as their text, a missing key as null; we validate.
        relation = con.read_json(
            str(path),
            format="newline_delimited",
            columns={c: "VARCHAR" for c in COLUMNS},
        )
        yield from relation.to_arrow_reader(BATCH_ROWS)
    except duckdb.Error as exc:
        raise IngestRejected(str(path), None, f"malformed NDJSON: {exc}") from None
    finally:
        con.close()


def _first_index(mask: pa.ChunkedArray | pa.Array) -> int | None:
    """Index of the first true value of a boolean mask, or None."""
    hits = pc.indices_nonzero(pc.fill_null(mask, False))
    return int(hits[0].as_py()) if len(hits) else None


def _first_uncastable(column: pa.ChunkedArray, target: pa.DataType) -> int:
    """Index of the first element that fails to cast (bisection: log n vectorised casts)."""
    lo, hi = 0, len(column)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            column.slice(lo, mid - lo).cast(target)
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return lo


def _cast(
    table: pa.Table, name: str, target: pa.DataType, file: str, first_row: int, what: str
) -> pa.ChunkedArray:
    column = table[name]
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = pc.utf8_trim_whitespace(column)
    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        index = _first_uncastable(column, target)
        raise IngestRejected(
            file, first_row + index, f"{name} {column[index].as_py()!r} is not {what}"
        ) from None


def _validate(table: pa.Table, file: str, first_row: int) -> pa.Table:
    for name in COLUMNS:
        index = _first_index(pc.is_null(table[name]))
        if index is not None:
            raise IngestRejected(file, first_row + index, f"missing value for column {name}")

    metric = table["metric"].cast(pa.string())
    valid = pa.array(metric_names())
    index = _first_index(pc.invert(pc.is_in(metric, value_set=valid)))
    if index is not None:
        raise IngestRejected(
            file,
            first_row + index,
            f"unknown metric {metric[index].as_py()!r}; valid metrics: {', '.join(metric_names())}",
        )

    ts = table["ts"]
    if pa.types.is_string(ts.type) or pa.types.is_large_string(ts.type):
        ts = pc.utf8_trim_whitespace(ts)
        index = _first_index(pc.invert(pc.match_substring_regex(ts, _ZONE_SUFFIX)))
        if index is not None:
            raise IngestRejected(
                file,
                first_row + index,
                f"timestamp {ts[index].as_py()!r} has no time zone; "
                "use ISO 8601 with Z or an offset, e.g. 2024-01-01T00:00:00Z",
            )
    elif pa.types.is_timestamp(ts.type) and ts.type.tz is None:
        raise IngestRejected(file, None, "column ts is a timestamp without time zone")
    ts = _cast(
        table.set_column(0, "ts", ts),
        "ts",
        RAW_SCHEMA.field("ts").type,
        file,
        first_row,
        "an ISO 8601 timestamp",
    )

    user_id = _cast(table, "user_id", pa.int32(), file, first_row, "an integer user id")
    index = _first_index(pc.less(user_id, 0))
    if index is not None:
        raise IngestRejected(file, first_row + index, "user_id must be >= 0")

    value = _cast(table, "value", pa.float64(), file, first_row, "a number")
    index = _first_index(pc.invert(pc.is_finite(value)))
    if index is not None:
        shown = value[index].as_py()
        shown = "NaN" if isinstance(shown, float) and math.isnan(shown) else shown
        raise IngestRejected(file, first_row + index, f"value {shown} is not a finite number")

    return pa.Table.from_arrays([ts, user_id, metric, value], schema=RAW_SCHEMA)
