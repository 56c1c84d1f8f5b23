"""Arrow IPC stream answers: `metric` dictionary-encoded, the stream's batches and its bytes.

`metric` goes out as `dictionary<int8, string>` over the query's metrics (sorted), instead
of a string per row: pandas reads it as a categorical, polars as a Categorical. A string per
row was 6.7 of the 16 MB of one participant-year raw; dictionary-encoded the stream is
10 MB, and /data answered it in 44 ms instead of 51 (bare DuckDB over the same files:
32-38 ms, same runs). The other formats carry the names as text, Parquet as strings.

The engine's batches each hold one series when the answer is long (it reads series by
series), so a batch's metric is usually one name: its indices are filled, not looked up
(a lookup costs ~20 ns a row, the check that a batch holds one name ~3).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from engine.shapes import constant

# int8 indices: the registry holds far fewer than 128 metrics (tests check it).
METRIC_TYPE = pa.dictionary(pa.int8(), pa.string())

# The IPC stream format's end-of-stream marker: a continuation token and a zero length.
_END = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def answer_schema(schema: pa.Schema) -> pa.Schema:
    """An answer schema as its Arrow streams carry it: `metric` dictionary-encoded."""
    index = schema.get_field_index("metric")
    return schema.set(index, pa.field("metric", METRIC_TYPE))


def with_metric_codes(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema, metrics: tuple[str, ...]
) -> Iterator[pa.RecordBatch]:
    """The answer's batches (of answer `schema`) with `metric` as indices into `metrics`,
    every batch the same dictionary (an IPC stream sends it once)."""
    codes = _MetricCodes(metrics)
    index = schema.get_field_index("metric")
    encoded = answer_schema(schema)
    for batch in batches:
        if not batch.schema.equals(schema):
            yield batch  # as it is: the stream refuses it (messages)
            continue
        arrays = batch.columns
        arrays[index] = codes.of(arrays[index])
        yield pa.RecordBatch.from_arrays(arrays, schema=encoded)


class _MetricCodes:
    """One stream's `metric` columns as indices. Per name, its text repeated is kept at the
    largest batch's length, and its index filled comes from the engine's kept constant
    columns (shapes.constant), a batch using their first rows: built per batch, they cost a
    third of the encoding's time (3 participants x 4 metrics x 1 year raw, 184 batches of
    ~21k rows)."""

    def __init__(self, metrics: tuple[str, ...]) -> None:
        self.metrics = metrics
        self.dictionary = pa.array(metrics, pa.string())
        self.codes = {name: code for code, name in enumerate(metrics)}
        self._texts: dict[str, pa.Buffer] = {}

    def of(self, column: pa.Array) -> pa.DictionaryArray:
        rows = len(column)
        if len(self.metrics) == 1:  # every row's metric is the one asked (the engine's rows)
            indices = constant(0, pa.int8(), rows)
        elif rows and self._all(column, name := column[0].as_py()):
            indices = constant(self._code(name), pa.int8(), rows)
        else:
            indices = pc.index_in(column, value_set=self.dictionary).cast(pa.int8())
            if indices.null_count:
                raise self._not_asked()
        # Valid by construction: from_arrays' own check of every index is skipped.
        return pa.DictionaryArray.from_arrays(indices, self.dictionary, safe=False)

    def _code(self, name: str) -> int:
        if name not in self.codes:
            raise self._not_asked()
        return self.codes[name]

    def _not_asked(self) -> ValueError:
        # Never served as a null or as another name: the answer would be wrong.
        return ValueError(f"a row's metric is not one of the query's: {self.metrics}")

    def _all(self, column: pa.Array, name: str) -> bool:
        """Whether every string of `column` is `name` (no nulls): its bytes are the name
        repeated, and every string is as long as the name."""
        if column.null_count:
            return False
        text = name.encode()
        rows, size = len(column), len(column) * len(text)
        offsets = np.frombuffer(column.buffers()[1], np.int32, rows + 1, column.offset * 4)
        if int(offsets[-1] - offsets[0]) != size:
            return False
        repeated = self._texts.get(name)
        if repeated is None or repeated.size < size:
            repeated = self._texts[name] = pa.py_buffer(text * rows)
        if not column.buffers()[2].slice(int(offsets[0]), size).equals(repeated.slice(0, size)):
            return False
        steps = offsets[1:] - offsets[:-1]
        return int(steps.min()) == int(steps.max()) == len(text)


def stream_batches(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The answer's batches as the stream's, at most about `rows` rows each: a large batch as
    it comes (sliced beyond `rows`; serializing takes slices without copying them), runs of
    small ones put together (a lake page comes as a batch per file: 24 rows of a day of 1h
    rollups; readers pay per batch). Putting large batches together would cost a copy of
    the whole answer, for nothing a reader gains."""
    small: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        for offset in range(0, batch.num_rows, rows):
            piece = batch.slice(offset, rows)
            if piece.num_rows >= rows // 8:
                if small:
                    yield pa.concat_batches(small)
                    small, held = [], 0
                yield piece
                continue
            small.append(piece)
            held += piece.num_rows
            if held >= rows:
                yield pa.concat_batches(small)
                small, held = [], 0
    if small:
        yield pa.concat_batches(small)


def messages(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> Iterator[bytes]:
    """The IPC stream, a chunk per batch: the schema, the dictionary and the first batch
    (as ipc.new_stream writes them), then each batch serialized straight into one buffer
    (a writer on a Python file costs ~3x that in copies and calls), then the end marker.
    A chunk per message: larger chunks (4-8 MiB) measured slower, sending overlaps less
    with rendering."""
    sent: list[pa.Array] | None = None  # the dictionaries, sent with the first batch
    encoded = [i for i, field in enumerate(schema) if pa.types.is_dictionary(field.type)]
    for batch in batches:
        if not batch.num_rows:
            continue
        if not batch.schema.equals(schema):  # as the IPC writer refuses it: never a torn stream
            raise pa.ArrowInvalid(
                f"Tried to write record batch with different schema: {batch.schema} vs {schema}"
            )
        if sent is None:
            sink = pa.BufferOutputStream()
            ipc.new_stream(sink, schema).write_batch(batch)  # not closed: no end marker yet
            yield sink.getvalue().to_pybytes()
            sent = [batch.column(i).dictionary for i in encoded]
            continue
        # Readers take this batch's indices into the dictionaries sent: never other ones.
        if not all(
            batch.column(i).dictionary.equals(d) for i, d in zip(encoded, sent, strict=True)
        ):
            raise pa.ArrowInvalid("a batch's dictionary differs from the one the stream sent")
        yield batch.serialize().to_pybytes()
    yield _END if sent is not None else schema.serialize().to_pybytes() + _END
