"""Answer formats: JSON pages, and NDJSON, CSV, Arrow IPC and Parquet streams.

Rows are rendered per Arrow batch with vectorised pyarrow/numpy, never row by row in
Python: a 1M-row page renders in about a second, and a stream holds one batch at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

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


def _json_number(values: pa.Array) -> pa.Array:
    text = pc.cast(values, pa.string())
    if pa.types.is_floating(values.type):
        text = pc.if_else(pc.is_finite(values), text, pa.scalar("null"))  # JSON has no NaN
    return pc.fill_null(text, "null")


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


def json_lines(batch: pa.RecordBatch, separator: str) -> pa.Array:
    """One JSON object per row (keys in schema order), each followed by `separator`."""
    pieces: list[Any] = []
    for i, (name, column) in enumerate(_columns(batch).items()):
        pieces.append(("{" if i == 0 else ",") + json.dumps(name) + ":")
        if name == "ts":
            pieces += ['"', iso_utc(column), '"']
        elif pa.types.is_string(column.type):
            pieces.append(_json_string(column))
        elif pa.types.is_date(column.type):  # local_date of calendar rows
            pieces += ['"', pc.fill_null(column.cast(pa.string()), ""), '"']
        else:
            pieces.append(_json_number(column))
    pieces.append("}" + separator)
    return pc.binary_join_element_wise(*pieces, "")


# -- formats -----------------------------------------------------------------------------


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
        for batch in batches:
            for offset in range(0, batch.num_rows, chunk_rows):
                if not first:
                    yield b","
                first = False
                # Each row ends with a separator: the chunk's last one is left out.
                yield bytes(string_bytes(json_lines(batch.slice(offset, chunk_rows), ","))[:-1])
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


def _arrow(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> Iterator[bytes]:
    sink = _Drain()
    with ipc.new_stream(pa.PythonFile(sink, mode="w"), schema) as out:
        for batch in batches:
            if batch.num_rows:
                out.write_batch(batch)
                yield sink.take()
    yield sink.take()  # end-of-stream marker (and the schema, for an empty answer)


def _parquet(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> Iterator[bytes]:
    sink = _Drain()
    with pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema, compression="zstd") as out:
        for batch in batches:
            if batch.num_rows:
                out.write_batch(batch)  # one row group per batch, flushed to the sink
                yield sink.take()
    yield sink.take()  # the footer


_STREAMS = {"ndjson": _ndjson, "csv": _csv, "arrow": _arrow, "parquet": _parquet}


# Rows rendered per chunk. Engine batches hold up to ~262k rows; rendering them in slices
# keeps each chunk a few MB and each step short, so concurrent streams interleave and the
# event loop is not held up behind one long copy. Parquet keeps larger row groups: readers
# prefer them.
CHUNK_ROWS = {"ndjson": 32_768, "csv": 32_768, "arrow": 65_536, "parquet": 131_072}


def _sliced(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    try:
        for batch in batches:
            for offset in range(0, batch.num_rows, rows):
                yield batch.slice(offset, rows)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def stream(
    format_name: str,
    batches: Iterator[pa.RecordBatch],
    schema: pa.Schema,
    chunk_rows: int | None = None,
) -> Iterator[bytes]:
    """Bytes of a streaming format, a chunk per slice of a batch (empty chunks skipped);
    `chunk_rows` overrides the format's slice size (CHUNK_ROWS)."""
    sliced = _sliced(batches, chunk_rows or CHUNK_ROWS[format_name])
    for chunk in _STREAMS[format_name](sliced, schema):
        if chunk:
            yield chunk
