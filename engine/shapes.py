"""The Arrow shapes of answers: raw rows and rollup rows, identical from every backend."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from engine.tiers import Resolution

TS = pa.timestamp("us", tz="UTC")

RAW = pa.schema(
    [
        ("user_id", pa.int32()),
        ("metric", pa.string()),
        ("ts", TS),
        ("value", pa.float64()),
    ]
)
ROLLUP = pa.schema(
    [
        ("user_id", pa.int32()),
        ("metric", pa.string()),
        ("ts", TS),
        ("count", pa.int64()),
        ("sum", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("avg", pa.float64()),  # sum / count, computed the same way by every backend
    ]
)

# Calendar buckets (local days, ISO weeks, months): a rollup row and what the bucket was.
CALENDAR = pa.schema(
    [
        *ROLLUP,
        ("local_date", pa.date32()),  # the bucket's first local date
        ("tz", pa.string()),  # the zone the bucket is counted in
        ("day_minutes", pa.int64()),  # its length: 1,380 / 1,440 / 1,500 around DST for 1d
        ("split", pa.bool_()),  # cut by a zone change (the other part is the next row)
    ]
)

# Rough in-memory bytes per row, for the memory budget's admission estimates.
ROW_BYTES = {"raw": 48, "rollup": 80, "calendar": 112}


def schema_for(resolution: Resolution) -> pa.Schema:
    return RAW if resolution == "raw" else ROLLUP


def row_bytes(resolution: Resolution) -> int:
    return ROW_BYTES["raw" if resolution == "raw" else "rollup"]


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast a backend's batch to the answer schema (drops driver field metadata too)."""
    if batch.schema.equals(schema, check_metadata=True):
        return batch
    arrays = [batch.column(i).cast(field.type) for i, field in enumerate(schema)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def with_series(
    batch: pa.RecordBatch, schema: pa.Schema, user_id: int, metric: str
) -> pa.RecordBatch:
    """A batch of one series' columns after (user_id, metric) as the answer's, those two
    added as constants: a scan of one series need not read or convert them (one
    participant-year raw: 30 ms of DuckDB's CPU instead of 51)."""
    rows = batch.num_rows
    data = metric.encode()
    if rows * len(data) >= 2**31 - 1:  # beyond 32-bit string offsets: the general way
        metrics = pa.repeat(pa.scalar(metric, pa.string()), rows)
    else:  # from buffers: a sixth of pa.repeat's time
        offsets = np.arange(rows + 1, dtype=np.int32) * np.int32(len(data))
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data * rows)]
        metrics = pa.Array.from_buffers(pa.string(), rows, buffers)
    users = pa.array(np.full(rows, user_id, dtype=np.int32))
    rest = [
        column if column.type == field.type else column.cast(field.type)
        for column, field in zip(batch.columns, list(schema)[2:], strict=True)
    ]
    return pa.RecordBatch.from_arrays([users, metrics, *rest], schema=schema)
