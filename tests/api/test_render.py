"""Answer text: fractional seconds appear on the values that have them, not on their batch."""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pytest

from api import render
from engine.shapes import schema_for
from engine.timestamps import iso_utc

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
    text = b"".join(render.stream(format_name, iter([batch]), batch.schema)).decode()
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
