"""Answer text: fractional seconds appear on the values that have them, not on their batch."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api import arrow_ipc, render
from engine.shapes import schema_for
from engine.timestamps import iso_utc

HR = ("heart_rate",)  # the metrics of most answers here

# One batch: whole seconds around a value with a fraction (a device stamping milliseconds).
TS_US = [1_704_067_200_000_000, 1_704_067_201_250_000, 1_704_067_202_000_000]
EXPECTED = ["2024-01-01T00:00:00Z", "2024-01-01T00:00:01.250000Z", "2024-01-01T00:00:02Z"]


def mixed_batch() -> pa.RecordBatch:
    schema = schema_for("raw")
    columns = {
        "user_id": pa.array([1, 1, 1], schema.field("user_id").type),
        "metric": pa.array(["heart_rate"] * 3, schema.field("metric").type),
        "ts": pa.array(TS_US, schema.field("ts").type),
        "value": pa.array([60.0, 61.5, 62.0], schema.field("value").type),
    }
    return pa.RecordBatch.from_pydict(columns, schema=schema)


def rendered_ts(format_name: str) -> list[str]:
    batch = mixed_batch()
    if format_name == "json":
        body = json.loads(render.json_page([batch], {}))
        return [row["ts"] for row in body["data"]]
    text = b"".join(render.stream(format_name, iter([batch]), batch.schema, HR)).decode()
    if format_name == "ndjson":
        return [json.loads(line)["ts"] for line in text.splitlines()]
    return [row["ts"] for row in csv.DictReader(io.StringIO(text))]


@pytest.mark.parametrize("format_name", ["json", "ndjson", "csv"])
def test_fractional_seconds_only_where_present(format_name: str) -> None:
    assert rendered_ts(format_name) == EXPECTED


def test_iso_text_outside_the_fast_tables_is_the_same() -> None:
    # Nulls and far years take the value-by-value path; it must write the same text.
    far = 253_402_300_800_000_000  # 10000-01-01
    ts = pa.array([*TS_US, far, None], pa.timestamp("us", tz="UTC"))
    assert iso_utc(ts, prefix="<", suffix=">").to_pylist() == [
        *(f"<{text}>" for text in EXPECTED),
        "<10000-01-01T00:00:00Z>",
        None,
    ]


# -- the JSON text against a row-by-row reference --------------------------------------------

SPECIAL_FLOATS = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e10, 9_999_999_999.0, -1e10, 5e-324]


def reference_line(row: dict[str, Any], schema: pa.Schema) -> str:
    """One row as JSON answers write it, value by value: floats in pyarrow's shortest text
    ('60', not '60.0'), NaN and infinities as null, timestamps as iso_utc writes them."""
    parts = []
    for field_ in schema:
        value = row[field_.name]
        if value is None:
            text = "null"
        elif field_.name == "ts":
            text = '"' + iso_utc(pa.array([value], field_.type))[0].as_py() + '"'
        elif pa.types.is_floating(field_.type):
            finite = math.isfinite(value)
            text = pa.array([value]).cast(pa.string())[0].as_py() if finite else "null"
        else:
            text = json.dumps(value)
        parts.append(json.dumps(field_.name) + ":" + text)
    return "{" + ",".join(parts) + "}"


floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**11), 10**11).map(float),  # whole numbers, both sides of 1e10
    st.sampled_from(SPECIAL_FLOATS),
    st.decimals(-1000, 1000, places=2, allow_nan=False).map(float),
)


@st.composite
def answer_batches(draw: st.DrawFn) -> list[pa.RecordBatch]:
    """A few batches of raw or rollup rows: labels in runs (answer order) or scattered,
    values whole or not, with nulls, NaN, infinities and -0."""
    schema = draw(st.sampled_from([schema_for("raw"), schema_for("1h")]))
    sizes = draw(st.lists(st.integers(0, 30), min_size=1, max_size=4))
    users = st.one_of(st.none(), st.integers(1, 3)) if draw(st.booleans()) else st.just(7)
    metrics = st.sampled_from(["heart_rate", "steps", 'sa"y\\ é'])
    values = st.one_of(st.none(), floats) if draw(st.booleans()) else floats
    run_ordered = draw(st.booleans())
    batches = []
    for size in sizes:
        rows: dict[str, list[Any]] = {
            "user_id": draw(st.lists(users, min_size=size, max_size=size)),
            "metric": draw(st.lists(metrics, min_size=size, max_size=size)),
            "ts": draw(st.lists(st.integers(0, 2 * 10**15), min_size=size, max_size=size)),
        }
        if run_ordered:
            rows["user_id"].sort(key=lambda u: -1 if u is None else u)
            rows["metric"].sort()
        for field_ in schema:
            if field_.name == "count":
                rows["count"] = draw(st.lists(st.integers(0, 10**6), min_size=size, max_size=size))
            elif field_.name not in rows:
                rows[field_.name] = draw(st.lists(values, min_size=size, max_size=size))
        batches.append(pa.RecordBatch.from_pydict(rows, schema=schema))
    return batches


@settings(max_examples=100, deadline=None)
@given(answer_batches(), st.integers(1, 50))
def test_json_text_equals_the_row_by_row_reference(
    batches: list[pa.RecordBatch], chunk_rows: int
) -> None:
    schema = batches[0].schema
    lines = [reference_line(row, schema) for b in batches for row in b.to_pylist()]
    page = b"".join(render.json_chunks(iter(batches), {"rows": len(lines)}, chunk_rows))
    assert page == f'{{"data":[{",".join(lines)}],"meta":{{"rows":{len(lines)}}}}}'.encode()
    metrics = tuple(sorted({m for b in batches for m in b.column("metric").to_pylist()}))
    ndjson = b"".join(render.stream("ndjson", iter(batches), schema, metrics, chunk_rows))
    assert ndjson == "".join(line + "\n" for line in lines).encode()


def test_scattered_labels_are_written_value_by_value_the_same() -> None:
    # Labels not in runs (not answer order): too many runs to build each run's text once.
    size = 1_000
    rows = {
        "user_id": [(i * 7919) % 13 or None for i in range(size)],
        "metric": [["steps", "heart_rate", 'sa"y'][(i * 31) % 3] for i in range(size)],
        "ts": [i * 1_250_000 for i in range(size)],
        "value": [SPECIAL_FLOATS[i % len(SPECIAL_FLOATS)] * (i % 5) for i in range(size)],
    }
    batch = pa.RecordBatch.from_pydict(rows, schema=schema_for("raw"))
    lines = [reference_line(row, batch.schema) for row in batch.to_pylist()]
    assert render.json_page([batch], {}) == f'{{"data":[{",".join(lines)}],"meta":{{}}}}'.encode()


# -- Arrow streams ---------------------------------------------------------------------------


def raw_batch(rows: int, first_second: int = 0) -> pa.RecordBatch:
    schema = schema_for("raw")
    seconds = range(first_second, first_second + rows)
    columns = {
        "user_id": pa.array([1] * rows, schema.field("user_id").type),
        "metric": pa.array(["heart_rate"] * rows, schema.field("metric").type),
        "ts": pa.array([TS_US[0] + s * 1_000_000 for s in seconds], schema.field("ts").type),
        "value": pa.array([float(s) for s in seconds], schema.field("value").type),
    }
    return pa.RecordBatch.from_pydict(columns, schema=schema)


def arrow_batches(chunks: list[bytes]) -> list[pa.RecordBatch]:
    import pyarrow.ipc as ipc

    return list(ipc.open_stream(b"".join(chunks)))


def decoded(batches: list[pa.RecordBatch]) -> pa.Table:
    """The streamed rows with `metric` as text again."""
    table = pa.Table.from_batches(batches)
    index = table.schema.get_field_index("metric")
    return table.set_column(index, "metric", table.column(index).cast(pa.string()))


def test_arrow_streams_large_batches_as_they_come_without_putting_them_together() -> None:
    """Large engine batches are sent as they are (putting them together into chunk-sized
    batches copied the whole answer once more); larger than a chunk, they are sliced."""
    batches = [raw_batch(3_000), raw_batch(3_000, 3_000), raw_batch(9_000, 6_000)]
    chunks = list(render.stream("arrow", iter(batches), schema_for("raw"), HR, 4_096))
    got = arrow_batches(chunks)
    assert [b.num_rows for b in got] == [3_000, 3_000, 4_096, 4_096, 808]
    assert decoded(got).equals(pa.Table.from_batches(batches))
    assert len(chunks) == len(got) + 1  # a chunk per batch; the last also ends the stream


def test_arrow_streams_put_runs_of_small_batches_together() -> None:
    """A lake page comes as a batch per file (24 rows of a day of 1h rollups): readers get
    batches of about a chunk's rows, not one per file."""
    batches = [raw_batch(24, 24 * i) for i in range(100)]
    got = arrow_batches(list(render.stream("arrow", iter(batches), schema_for("raw"), HR, 1_000)))
    assert [b.num_rows for b in got] == [1_008, 1_008, 384]
    assert decoded(got).equals(pa.Table.from_batches(batches))


def test_arrow_stream_bytes_are_the_ipc_writers() -> None:
    import pyarrow.ipc as ipc

    batches = [raw_batch(5_000), raw_batch(5, 5_000).slice(1, 3), raw_batch(7_000, 6_000)]
    sink = pa.BufferOutputStream()
    encoded = arrow_ipc.with_metric_codes(batches, schema_for("raw"), HR)
    with ipc.new_stream(sink, arrow_ipc.answer_schema(schema_for("raw"))) as writer:
        for batch in arrow_ipc.stream_batches(encoded, 65_536):
            writer.write_batch(batch)
    streamed = b"".join(render.stream("arrow", iter(batches), schema_for("raw"), HR))
    assert streamed == sink.getvalue().to_pybytes()
    empty = ipc.open_stream(b"".join(render.stream("arrow", iter([]), schema_for("raw"), HR)))
    assert empty.read_all().num_rows == 0
    assert empty.schema.field("metric").type == arrow_ipc.METRIC_TYPE


def test_an_arrow_stream_refuses_a_batch_of_another_schema() -> None:
    """Never a stream whose messages do not match its schema (readers would misread it)."""
    chunks = render.stream("arrow", iter([raw_batch(3), mixed_batch()]), schema_for("1h"), HR)
    with pytest.raises(pa.ArrowInvalid, match="different schema"):
        list(chunks)
