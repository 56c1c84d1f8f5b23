"""Read ingest files (CSV, Parquet, NDJSON) into validated Arrow batches.

Every batch comes out with the warm store's exact types (ts timestamptz, user_id int32, metric
string, value float64) or the file is refused with its row number and the reason. Readers
stream in batches, so a file larger than memory is still checked row by row.
"""

from __future__ import annotations

import collections
import csv
import math
import re
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
# Also the longest line (header included) a CSV may have: pyarrow parses whole blocks, so a
# longer line is refused rather than read into memory.
CSV_BLOCK_BYTES = 64 << 20
# --ts-unit: integer epochs in these units, as microseconds (the warm store's unit).
TS_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1}
_RAGGED = re.compile(r"Expected (\d+) columns, got (\d+)")
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


def read_validated(
    path: Path, csv_block_bytes: int = CSV_BLOCK_BYTES, ts_unit: str | None = None
) -> Iterator[pa.Table]:
    """Yield validated batches of `path`; raise IngestRejected at the first bad row.

    `csv_block_bytes`: how much CSV text each batch holds (and the longest line allowed);
    `ts_unit`: `ts` holds integer epochs in s, ms or us (otherwise integers are refused).
    """
    if ts_unit is not None and ts_unit not in TS_UNITS:
        raise IngestRejected(
            str(path), None, f"ts unit {ts_unit!r}; allowed: {', '.join(TS_UNITS)}"
        )
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
        yield _validate(table, str(path), first_row, ts_unit)
        first_row += table.num_rows


def _require_columns(names: list[str], file: str, hint: str = "") -> None:
    repeated = sorted(name for name, count in collections.Counter(names).items() if count > 1)
    if repeated:
        # Which of two `value` columns is the value? Guessing would store the wrong one.
        raise IngestRejected(
            file, None, f"column(s) {', '.join(repeated)} appear more than once in the header"
        )
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
    with path.open("rb") as handle:
        first_line = handle.readline(block_bytes + 1)  # bounded: never a whole 1 GB line
    if len(first_line) > block_bytes:
        raise IngestRejected(
            str(path),
            None,
            f"the header (first line) is longer than {block_bytes} bytes; it must hold the "
            f"column names {','.join(COLUMNS)}",
        )
    # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first name.
    header_line = first_line.decode("utf-8-sig", errors="replace")
    header = next(csv.reader([header_line]), [])
    _require_columns([h.strip() for h in header], str(path), _delimiter_hint(header_line))
    try:  # opening parses the first block already
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
        yield from reader
    except pa.ArrowInvalid as exc:
        raise _csv_refusal(path, block_bytes, str(exc)) from None


def _csv_refusal(path: Path, block_bytes: int, message: str) -> IngestRejected:
    """pyarrow's parse error as a refusal naming the row (its streaming reader knows none)."""
    if "straddles" in message:
        return IngestRejected(
            str(path),
            None,
            f"a line is longer than {block_bytes} bytes (the CSV block size); is it a CSV "
            "of one row per line?",
        )
    ragged = _RAGGED.search(message)
    if ragged is None:
        return IngestRejected(str(path), None, f"malformed CSV: {message}")
    expected = int(ragged.group(1))
    return IngestRejected(
        str(path),
        _first_ragged_row(path, expected, block_bytes),
        f"{ragged.group(2)} fields where the header has {expected} ({','.join(COLUMNS)})",
    )


def _first_ragged_row(path: Path, expected: int, block_bytes: int) -> int | None:
    """The data row (1-based, as the other errors count, blank lines skipped) whose field
    count differs from the header's. Only on the error path: it reads the file again."""
    limit = csv.field_size_limit()
    csv.field_size_limit(block_bytes)  # lines longer than a block were refused already
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
            records = (fields for fields in csv.reader(handle) if fields)
            next(records, None)  # the header
            for row, fields in enumerate(records, start=1):
                if len(fields) != expected:
                    return row
    except csv.Error:
        return None
    finally:
        csv.field_size_limit(limit)
    return None


def _parquet_batches(path: Path) -> Iterator[pa.RecordBatch]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise IngestRejected(str(path), None, f"not a readable Parquet file: {exc}") from None
    schema = parquet.schema_arrow
    _require_columns(schema.names, str(path))
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


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _check_ts_type(kind: pa.DataType, file: str) -> None:
    """Refuse a `ts` type that would be stored as some other instant (epoch seconds read as
    microseconds, a date as its UTC midnight, a local time as UTC)."""
    if _is_text(kind) or (pa.types.is_timestamp(kind) and kind.tz is not None):
        return
    how = (
        "store a timestamp with a zone (e.g. timestamp[us, tz=UTC]) or ISO 8601 text with Z "
        "or an offset (2024-01-01T00:00:00Z)"
    )
    if pa.types.is_timestamp(kind):
        reason = f"column ts is {kind}, a timestamp without time zone; {how}"
    elif pa.types.is_integer(kind):
        reason = (
            f"column ts is {kind}, a number rather than a time; {how}; or, for epoch "
            "seconds, milliseconds or microseconds, pass --ts-unit s, ms or us"
        )
    elif pa.types.is_date(kind):
        reason = f"column ts is {kind}, a date without a time of day or zone; {how}"
    else:
        reason = f"column ts is {kind}; {how}"
    raise IngestRejected(file, None, reason)


def _epochs(table: pa.Table, unit: str, file: str, first_row: int) -> pa.ChunkedArray:
    """`ts` as integer epochs in `unit` (--ts-unit), as the warm store's timestamps."""
    kind = table["ts"].type
    if not (_is_text(kind) or pa.types.is_integer(kind)):
        raise IngestRejected(
            file, None, f"--ts-unit {unit} reads integer epochs; column ts is {kind}"
        )
    epochs = _cast(table, "ts", pa.int64(), file, first_row, f"an integer epoch ({unit})")
    limit = (2**63 - 1) // TS_UNITS[unit]
    index = _first_index(pc.greater(pc.abs(pc.max_element_wise(epochs, -limit)), limit))
    if index is not None:
        raise IngestRejected(
            file, first_row + index, f"ts {epochs[index].as_py()} is out of range for epoch {unit}"
        )
    micros = pc.multiply(epochs, TS_UNITS[unit])
    return micros.cast(RAW_SCHEMA.field("ts").type)


def _check_number_type(name: str, kind: pa.DataType, file: str, allowed: str) -> None:
    numeric = pa.types.is_integer(kind) or (
        name == "value" and (pa.types.is_floating(kind) or pa.types.is_decimal(kind))
    )
    if not (numeric or _is_text(kind)):
        # A boolean would be stored as 1.0/0.0, silently: refuse it like any other type.
        raise IngestRejected(file, None, f"column {name} is {kind}; it must hold {allowed}")


def validate_table(table: pa.Table, file: str, first_row: int = 1) -> pa.Table:
    """The checks and types of `read_validated`, for rows another reader produced (ts, user_id,
    metric, value); raise IngestRejected naming `file` and the row (counted from `first_row`)."""
    _require_columns(table.column_names, file)
    return _validate(table.select(list(COLUMNS)), file, first_row)


def _validate(table: pa.Table, file: str, first_row: int, ts_unit: str | None = None) -> pa.Table:
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

    _check_number_type("user_id", table["user_id"].type, file, "integer user ids")
    _check_number_type("value", table["value"].type, file, "numbers (1.0/0.0, not true/false)")
    if ts_unit is not None:
        return _typed(table, _epochs(table, ts_unit, file, first_row), metric, file, first_row)
    _check_ts_type(table["ts"].type, file)
    ts = table["ts"]
    if _is_text(ts.type):
        ts = pc.utf8_trim_whitespace(ts)
        index = _first_index(pc.invert(pc.match_substring_regex(ts, _ZONE_SUFFIX)))
        if index is not None:
            shown = ts[index].as_py()
            epoch_hint = (
                "; for epoch seconds, milliseconds or microseconds pass --ts-unit s, ms or us"
                if re.fullmatch(r"-?[0-9]+", shown)
                else ""
            )
            raise IngestRejected(
                file,
                first_row + index,
                f"timestamp {shown!r} has no time zone; use ISO 8601 with Z or an offset, "
                f"e.g. 2024-01-01T00:00:00Z{epoch_hint}",
            )
    ts = _cast(
        table.set_column(0, "ts", ts),
        "ts",
        RAW_SCHEMA.field("ts").type,
        file,
        first_row,
        "an ISO 8601 timestamp",
    )
    return _typed(table, ts, metric, file, first_row)


def _typed(
    table: pa.Table, ts: pa.ChunkedArray, metric: pa.ChunkedArray, file: str, first_row: int
) -> pa.Table:
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
