"""The Arrow shapes of answers: raw rows and rollup rows, identical from every backend."""

from __future__ import annotations

import threading
from collections import OrderedDict

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


def fixed_columns(users: tuple[int, ...], metrics: tuple[str, ...]) -> dict[str, int | str]:
    """The columns every row of an answer over `users` and `metrics` holds the same value
    in: a reader need not read them (with_constants adds them)."""
    fixed: dict[str, int | str] = {}
    if len(users) == 1:
        fixed["user_id"] = users[0]
    if len(metrics) == 1:
        fixed["metric"] = metrics[0]
    return fixed


def select_list(resolution: Resolution, fixed: dict[str, int | str]) -> str:
    """The answer's columns as SQL, but the `fixed` ones (avg as every backend computes it)."""
    names = (name for name in schema_for(resolution).names if name not in fixed)
    return ", ".join("sum / count AS avg" if name == "avg" else name for name in names)


def with_constants(
    batch: pa.RecordBatch, schema: pa.Schema, constants: dict[str, int | str]
) -> pa.RecordBatch:
    """The answer's batch from `batch`, which holds the schema's other columns in order:
    the columns a query fixes (one participant, one metric) are added as constants. A scan
    need not read or convert them: one participant-year raw took 30 ms of DuckDB's CPU
    instead of 51 without them."""
    if not constants:
        return conform(batch, schema)
    rows = batch.num_rows
    read = iter(batch.columns)
    arrays = []
    for field in schema:
        if field.name in constants:
            arrays.append(constant(constants[field.name], field.type, rows))
            continue
        column = next(read)
        arrays.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# A constant column is made once and handed out as slices (Arrow arrays are immutable, a
# slice costs no copy): answers of one participant's one metric repeat the same two, in every
# batch. Made afresh just after a DuckDB scan (cold caches), the two of a 168-row answer took
# ~40 us of its ~1 ms; those of a participant-year raw's 13 batches of ~37k rows, ~1 ms of its
# ~11 (a string per row of the metric's name, the user id per row).
# All columns kept, at most: memory outside the budget's accounting, so a few answers' worth
# (a participant-year's two columns of ~37k rows take 0.7 MiB).
_KEPT_BYTES = 4 * 2**20
_KEPT_ROWS = 131_072  # a column longer than this is made for its answer alone


class _ConstantColumns:
    """The longest column made so far per (value, type), least recently used dropped first
    once they hold more than `limit_bytes`. Thread-safe: batches are made in several threads."""

    def __init__(self, limit_bytes: int, longest: int) -> None:
        self._limit_bytes = limit_bytes
        self._longest = longest
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[int | str, pa.DataType], pa.Array] = OrderedDict()
        self._bytes = 0

    def get(self, value: int | str, kind: pa.DataType, rows: int) -> pa.Array:
        if rows > self._longest:
            return _constant(value, kind, rows)
        key = (value, kind)
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None and len(kept) >= rows:
                self._kept.move_to_end(key)
                return kept.slice(0, rows)
        # At least a short answer's worth, so the rows of a few batches do not each grow it.
        made = _constant(value, kind, max(rows, 2_048))
        with self._lock:
            replaced = self._kept.pop(key, None)
            if replaced is not None:
                self._bytes -= replaced.nbytes
            self._kept[key] = made
            self._bytes += made.nbytes
            while self._bytes > self._limit_bytes and len(self._kept) > 1:
                _, dropped = self._kept.popitem(last=False)
                self._bytes -= dropped.nbytes
        return made.slice(0, rows)

    def kept_bytes(self) -> int:
        with self._lock:
            return self._bytes


_CONSTANTS = _ConstantColumns(_KEPT_BYTES, _KEPT_ROWS)


def constant(value: int | str, kind: pa.DataType, rows: int) -> pa.Array:
    """`rows` times `value`."""
    return _CONSTANTS.get(value, kind, rows)


def _constant(value: int | str, kind: pa.DataType, rows: int) -> pa.Array:
    if not pa.types.is_string(kind):
        return pa.array(np.full(rows, value, dtype=kind.to_pandas_dtype()))
    data = str(value).encode()
    if rows * len(data) >= 2**31 - 1:  # beyond 32-bit string offsets: the general way
        return pa.repeat(pa.scalar(value, kind), rows)
    # From buffers: a sixth of pa.repeat's time.
    offsets = np.arange(rows + 1, dtype=np.int32) * np.int32(len(data))
    return pa.Array.from_buffers(
        kind, rows, [None, pa.py_buffer(offsets), pa.py_buffer(data * rows)]
    )
