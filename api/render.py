"""Answer formats: JSON pages, and NDJSON, CSV, Arrow IPC and Parquet streams.

Rows are rendered a chunk at a time with vectorised pyarrow/numpy, never row by row in
Python, and a stream holds one chunk at a time. JSON text is the row's pieces joined per
row, and joining costs per piece: the labels (user_id, metric) are one piece, their text
built once per run of a series; fixed text rides inside the label and timestamp pieces;
whole-number floats are cast through int64 (same text, 4x faster). Raw pages render at
3-5M rows/s, rollup pages at 1-2M (issue 13; was 1.5M and 0.2-1M).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from api import arrow_ipc
from engine.errors import InvalidParameter
from engine.timestamps import iso_utc, string_bytes

MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv",  # Litestar adds "; charset=utf-8"
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
}
FORMATS = tuple(MEDIA_TYPES)
STREAMING_FORMATS = ("ndjson", "csv", "arrow", "parquet")

# Media types (and common aliases) a client may ask for in Accept.
_ACCEPTED: dict[str, str] = {
    "application/json": "json",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/x-jsonlines": "ndjson",
    "text/csv": "csv",
    "application/vnd.apache.arrow.stream": "arrow",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "*/*": "json",
    "application/*": "json",
    "text/*": "csv",
}


def choose_format(explicit: str | None, accept: str | None) -> str:
    """The `format` parameter if given (it wins), else the best match in Accept, else json."""
    if explicit is not None:
        name = explicit.strip().lower()
        if name not in MEDIA_TYPES:
            raise InvalidParameter(
                "format", f"format={explicit!r} is not supported; allowed: {', '.join(FORMATS)}"
            )
        return name
    candidates: list[tuple[tuple[float, bool, int], str]] = []
    for position, part in enumerate((accept or "").split(",")):
        media, *params = [p.strip() for p in part.split(";")]
        offered = _ACCEPTED.get(media.lower())
        if offered is None:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            # Higher quality first; at equal quality exact types beat wildcards, then order.
            candidates.append(((quality, "*" not in media, -position), offered))
    # An Accept with nothing we serve gets JSON rather than 406: the body says what it is.
    return max(candidates, key=lambda c: c[0])[1] if candidates else "json"


# -- text pieces -------------------------------------------------------------------------

# Floats that are whole numbers print as integers below this (pyarrow's float text switches
# to an exponent at 1e10: '1e+10'); casting them through int64 is ~4x faster than the
# shortest-repr float cast, and gives the same text.
_WHOLE_BELOW = 1e10


def _whole_numbers(values: pa.Array) -> np.ndarray | None:
    """`values` as int64 when every one is a whole number pyarrow prints without an exponent
    or a sign of zero ('-0'), else None."""
    if values.null_count:
        return None
    if pa.types.is_integer(values.type):
        fits = values.type != pa.uint64()  # (int64 holds every other integer type)
        return values.to_numpy().astype(np.int64, copy=False) if fits else None
    floats = values.to_numpy(zero_copy_only=False)
    whole = (floats == np.trunc(floats)) & (np.abs(floats) < _WHOLE_BELOW)
    if not whole.all() or np.signbit(floats[floats == 0]).any():
        return None
    return floats.astype(np.int64)


def _json_number(values: pa.Array) -> pa.Array:
    if pa.types.is_floating(values.type):
        whole = _whole_numbers(values)
        if whole is not None:
            return pc.cast(pa.array(whole), pa.string())
    text = pc.cast(values, pa.string())
    if pa.types.is_floating(values.type):
        finite = pc.is_finite(values)
        if not pc.all(finite).as_py():
            text = pc.if_else(finite, text, pa.scalar("null"))  # JSON has no NaN
    return pc.fill_null(text, "null") if text.null_count else text


def _json_numbers(columns: dict[str, pa.Array]) -> dict[str, pa.Array]:
    """Numeric columns' text: the whole-number ones cast together, as are the float ones
    (a cast of a short chunk costs mostly its call: a rollup row has five numbers)."""
    whole = {name: _whole_numbers(column) for name, column in columns.items()}
    texts = _sliced_back(
        {name: ints for name, ints in whole.items() if ints is not None},
        lambda parts: pc.cast(pa.array(np.concatenate(parts)), pa.string()),
    )
    rest = {name: columns[name] for name, ints in whole.items() if ints is None}
    if len({column.type for column in rest.values()}) == 1:
        texts.update(_sliced_back(rest, lambda parts: _json_number(pa.concat_arrays(parts))))
    else:
        texts.update({name: _json_number(column) for name, column in rest.items()})
    return texts


def _sliced_back(
    columns: Mapping[str, Any], text_of: Callable[[list[Any]], pa.Array]
) -> dict[str, pa.Array]:
    """`text_of` the columns end to end, cut back into one text per column."""
    if not columns:
        return {}
    text = text_of(list(columns.values()))
    texts, offset = {}, 0
    for name, column in columns.items():
        texts[name] = text.slice(offset, len(column))
        offset += len(column)
    return texts


def _json_string(values: pa.Array) -> pa.Array:
    """JSON string literals; few distinct values (metric names), so encode those and take."""
    encoded = values.dictionary_encode()
    literals = pa.array([json.dumps(v) for v in encoded.dictionary.to_pylist()], pa.string())
    return pc.fill_null(pc.take(literals, encoded.indices), "null")


def text_column(name: str, column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A column's values as text, as JSON answers write them (for the CLI's table)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if name == "ts":
        return iso_utc(column)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return _json_number(column)
    return column.cast(pa.string())


def _columns(batch: pa.RecordBatch) -> dict[str, pa.Array]:
    return {name: batch.column(i) for i, name in enumerate(batch.schema.names)}


@dataclass(frozen=True)
class _Wrapped:
    """A column's text that takes the fixed text around it at no cost of its own."""

    text: Callable[[str, str], pa.Array]  # (prefix, suffix) -> the text per row


# A piece of a row's text: fixed text, a column's text, or a wrapped column's text.
_Piece: TypeAlias = str | pa.Array | _Wrapped


def _joined(pieces: list[_Piece]) -> pa.Array:
    """The pieces joined per row. Joining costs per row and piece alike, fixed or not, so
    fixed text goes inside the wrapped pieces next to it, and consecutive fixed texts are one.
    """
    merged: list[_Piece] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    parts: list[str | pa.Array] = []
    i = 0
    while i < len(merged):
        piece = merged[i]
        if isinstance(piece, _Wrapped):
            prefix = parts.pop() if parts and isinstance(parts[-1], str) else ""
            following = merged[i + 1] if i + 1 < len(merged) else None
            suffix = following if isinstance(following, str) else ""
            parts.append(piece.text(prefix, suffix))
            i += 2 if suffix else 1
        else:
            parts.append(piece)
            i += 1
    return pc.binary_join_element_wise(*parts, "")


def _is_label(name: str, column: pa.Array) -> bool:
    """A column with few distinct values in long runs (answers are sorted by series)."""
    return pa.types.is_string(column.type) or name == "user_id"


def _label_runs(columns: list[pa.Array]) -> np.ndarray | None:
    """Where runs of equal labels start (every column's value equal to the row before), or
    None when there are too many runs for their text to be built one run at a time."""
    rows = len(columns[0])
    changed = np.zeros(max(rows - 1, 0), dtype=bool)
    for column in columns if rows > 1 else ():
        if pa.types.is_integer(column.type) and not column.null_count:
            values = column.to_numpy()
            changed |= values[1:] != values[:-1]
            continue
        differs = pc.not_equal(column.slice(1), column.slice(0, rows - 1))
        if differs.null_count:
            differs = pc.fill_null(differs, True)
        changed |= differs.to_numpy(zero_copy_only=False)
    starts = np.concatenate(([0], np.flatnonzero(changed) + 1))
    return starts if len(starts) <= 64 + rows // 64 else None


def _label_text(value: Any) -> str:
    if value is None:
        return "null"
    return json.dumps(value) if isinstance(value, str) else str(value)


def _labels(names: list[str], columns: list[pa.Array]) -> list[_Piece]:
    """Consecutive label columns, keys included: the text of each run of equal labels is
    built once and repeated, as one wrapped piece."""
    keys = [("," if i else "") + json.dumps(name) + ":" for i, name in enumerate(names)]
    starts = _label_runs(columns) if len(columns[0]) else None
    if starts is None:
        pieces: list[_Piece] = []
        for key, column in zip(keys, columns, strict=True):
            is_text = pa.types.is_string(column.type)
            pieces += [key, _json_string(column) if is_text else _json_number(column)]
        return pieces
    lengths = np.diff(np.append(starts, len(columns[0])))
    runs = zip(*(column.take(pa.array(starts)).to_pylist() for column in columns), strict=True)
    texts = ["".join(k + _label_text(v) for k, v in zip(keys, run, strict=True)) for run in runs]
    which = pa.array(np.repeat(np.arange(len(texts)), lengths))

    def wrapped(prefix: str, suffix: str) -> pa.Array:
        return pc.take(pa.array([prefix + t + suffix for t in texts], pa.string()), which)

    return [_Wrapped(wrapped)]


def _timestamps(column: pa.Array) -> _Piece:
    return _Wrapped(lambda prefix, suffix: iso_utc(column, prefix + '"', '"' + suffix))


def json_lines(batch: pa.RecordBatch, separator: str) -> pa.Array:
    """One JSON object per row (keys in schema order), each followed by `separator`."""
    pieces: list[_Piece] = ["{"]
    columns = list(_columns(batch).items())
    numbers = _json_numbers(
        {
            name: column
            for name, column in columns
            if (pa.types.is_integer(column.type) or pa.types.is_floating(column.type))
            and not _is_label(name, column)
        }
    )
    i = 0
    while i < len(columns):
        if i:
            pieces.append(",")
        name, column = columns[i]
        if _is_label(name, column):
            group = i
            while i < len(columns) and _is_label(*columns[i]):
                i += 1
            pieces += _labels([n for n, _ in columns[group:i]], [c for _, c in columns[group:i]])
            continue
        pieces.append(json.dumps(name) + ":")
        if name == "ts":
            pieces.append(_timestamps(column))
        elif pa.types.is_date(column.type):  # local_date of calendar rows
            pieces += ['"', pc.fill_null(column.cast(pa.string()), ""), '"']
        else:
            pieces.append(numbers[name] if name in numbers else _json_number(column))
        i += 1
    pieces.append("}" + separator)
    return _joined(pieces)


# -- formats -----------------------------------------------------------------------------


def _rechunked(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The rows in batches of `rows` (the last one fewer): large batches sliced, small ones
    put together. Rendering costs ~0.5 ms per batch besides its rows, and a lake page comes
    as a batch per file (a day of a series: 24 rows of 1h rollups), so chunks, not the
    answer's batches, set how often that is paid."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        offset = 0
        while offset < batch.num_rows:
            piece = batch.slice(offset, rows - held)
            pending.append(piece)
            held += piece.num_rows
            offset += piece.num_rows
            if held == rows:
                yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
                pending, held = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)


# Rows of a JSON page rendered per chunk: a chunk is a few MB of text, so a page of any size
# holds its Arrow rows plus one chunk's rendering at a time, never the whole text.
JSON_CHUNK_ROWS = 32_768


def json_chunks(
    batches: Iterable[pa.RecordBatch],
    meta: Mapping[str, Any],
    chunk_rows: int = JSON_CHUNK_ROWS,
) -> Iterator[bytes]:
    """{"data": [...], "meta": {...}} for a page, a chunk per `chunk_rows` rows."""
    try:
        yield b'{"data":['
        first = True
        for chunk in _rechunked(batches, chunk_rows):
            if not first:
                yield b","
            first = False
            # Each row ends with a separator: the chunk's last one is left out.
            yield bytes(string_bytes(json_lines(chunk, ","))[:-1])
        yield b'],"meta":' + json.dumps(meta, separators=(",", ":")).encode() + b"}"
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # releases the page's memory reservation now, not at GC


def json_page(batches: Iterable[pa.RecordBatch], meta: Mapping[str, Any]) -> bytes:
    """A whole JSON page at once (the CLI's and tests' convenience)."""
    return b"".join(json_chunks(batches, meta))


class _Drain:
    """A write-only file that hands its bytes out as they come (for pyarrow writers)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def take(self) -> bytes:
        chunk = b"".join(self._parts)
        self._parts.clear()
        return chunk


def _with_text_ts(batch: pa.RecordBatch) -> pa.RecordBatch:
    columns = _columns(batch)
    columns["ts"] = iso_utc(columns["ts"])
    return pa.RecordBatch.from_pydict(columns)


def _ndjson(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> Iterator[bytes]:
    for batch in batches:
        if batch.num_rows:
            yield bytes(string_bytes(json_lines(batch, "\n")))


def _csv(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> Iterator[bytes]:
    sink = _Drain()
    text_schema = schema.set(schema.get_field_index("ts"), pa.field("ts", pa.string()))
    with pacsv.CSVWriter(pa.PythonFile(sink, mode="w"), text_schema) as out:
        yield sink.take()  # the header, even for an empty answer
        for batch in batches:
            if batch.num_rows:
                out.write_batch(_with_text_ts(batch))
                yield sink.take()
    yield sink.take()


def _parquet(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> Iterator[bytes]:
    sink = _Drain()
    with pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema, compression="zstd") as out:
        for batch in batches:
            if batch.num_rows:
                out.write_batch(batch)  # one row group per batch, flushed to the sink
                yield sink.take()
    yield sink.take()  # the footer


_STREAMS = {"ndjson": _ndjson, "csv": _csv, "arrow": arrow_ipc.messages, "parquet": _parquet}


# Rows rendered per chunk. Engine batches hold up to ~262k rows; rendering them in slices
# keeps each chunk a few MB and each step short, so concurrent streams interleave and the
# event loop is not held up behind one long copy. Parquet keeps larger row groups: readers
# prefer them.
CHUNK_ROWS = {"ndjson": 32_768, "csv": 32_768, "arrow": 65_536, "parquet": 131_072}


def _sliced(
    batches: Iterator[pa.RecordBatch], rows: int, format_name: str
) -> Iterator[pa.RecordBatch]:
    try:
        if format_name == "arrow":
            yield from arrow_ipc.stream_batches(batches, rows)
        else:
            yield from _rechunked(batches, rows)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def stream(
    format_name: str,
    batches: Iterator[pa.RecordBatch],
    schema: pa.Schema,
    metrics: tuple[str, ...],
    chunk_rows: int | None = None,
) -> Iterator[bytes]:
    """Bytes of a streaming format, a chunk per slice of a batch (empty chunks skipped).
    `metrics`: the query's (Arrow's `metric` dictionary); `chunk_rows` overrides the
    format's slice size (CHUNK_ROWS; Arrow's largest batch)."""
    if format_name == "arrow":
        batches = arrow_ipc.with_metric_codes(batches, schema, metrics)
        schema = arrow_ipc.answer_schema(schema)
    sliced = _sliced(batches, chunk_rows or CHUNK_ROWS[format_name], format_name)
    for chunk in _STREAMS[format_name](sliced, schema):
        if chunk:
            yield chunk
