"""Small answers the warm store gives alone, in one statement (issue 13, point 1).

The general path costs two warm-store round trips before the first row (the catalog, then
the rows through ADBC, which prepares each statement and so adds its own), while a short
question to a table answers in one. A small answer needs no catalog when the warm store
holds every day of its span, whatever the lake also holds:
- 1h and 1d: the warm store keeps those tiers for every day (STRATUM_WARM_ROLLUP_ROWS);
- raw and 1m: every day whose rows were not tiered out of it. A day the lake also serves
  reads the same from either (tiering deletes a day only once the lake's copy is verified
  equal, and the warm store is where late rows land first).
What the planner would still have to know, the statement finds out itself, in the same
snapshot as the rows (so nothing can change between the two): whether any day of the span
has rollups lagging raw (those days are rolled up from raw on the fly), and for raw and 1m,
whether any day of the span is tiered (one index probe of day_state). Either makes it
answer no row, and the request takes the general path (as an empty answer does: no row
cannot tell the two apart). STRATUM_WARM_ROLLUP_ROWS=0 (the lake wherever it holds the
days) turns this path off.

psycopg decodes rows one by one, so past some length the general path's columnar reads
win. Timestamps are read as their wire integers, the columns the query fixes (one
participant, one metric) not at all, and rows converted a column at a time: 1,340 raw rows
took 2.4 ms read and converted, against 5.0 as datetimes converted as structs. An answer that
may hold COLUMNS_FROM rows or more comes as an array per column, read by numpy from the
array's bytes (1.9 ms for those rows). A raw or 1m
answer's size is not known beforehand: the statement reads at most DIRECT_ROWS + 1 rows,
and a longer answer takes the general path (and its shape is remembered: the next one takes
it at once). A 1h or 1d answer is at most a row per bucket: up to STRATUM_WARM_ROLLUP_ROWS
of them come this way (most_rows).
"""

from __future__ import annotations

import functools
import struct
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import postgres
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format
from psycopg.types.numeric import Int8BinaryLoader

from engine.plan import Plan, Segment
from engine.query import DataQuery, from_us, to_us
from engine.shapes import constant, fixed_columns, schema_for
from engine.tiers import TIERED, TIERS, Resolution, minute_rows

DIRECT_ROWS = 2048

# The resolutions whose days tiering removes from the warm store (raw and 1m), by name: a
# Tier compared with `in` is compared field by field, a dozen times per answer.
_TIERED = frozenset(name for name, tier in TIERS.items() if tier in TIERED)

# Answers that may hold this many rows or more come as a column per array (array_agg), not
# as rows: psycopg then loads one value per column instead of one per cell, and numpy reads
# each array's bytes at once. 1 participant-day raw (1,340 rows) was read and converted in
# 1.90 ms instead of 2.18, 1 participant-month 1h (716) in 2.11 instead of 2.23; 168 rows
# of 1h took 1.16 ms instead of 1.03 (the aggregates cost the server more than they save).
COLUMNS_FROM = 256

# timestamptz on the wire (binary) is int8 microseconds since 2000-01-01 UTC: read as that
# integer by psycopg's int8 loader (its C one, which psycopg registers in its place), not as
# a datetime (a Python object per row, and pyarrow asks each one its UTC offset).
_WIRE_EPOCH_US = to_us(datetime(2000, 1, 1, tzinfo=UTC))

# No day of the span may have rollups lagging raw (1m, 1h, 1d), nor, for raw and 1m, rows
# tiered out of the warm store: one probe of day_state by its key, run once (a one-time filter
# of the rows). When it fails, no row is read and the answer is empty: the general path
# answers any empty one (it may be the right answer, or the days' checks failed).
_BLOCKING = {
    False: "change_seq > refreshed_seq",
    True: "(change_seq > refreshed_seq OR tiered_seq IS NOT NULL)",
}
_SERVABLE = (
    "NOT EXISTS (SELECT 1 FROM day_state WHERE user_id {user} "
    "AND day BETWEEN %(first)s AND %(last)s AND {blocking})"
)
_AFTER = "AND (user_id, metric, ts) > (%(after_user)s, %(after_metric)s, %(after_ts)s) "


@dataclass(frozen=True)
class Direct:
    """What the statement read: the rows, or None when a day of the span needs the
    general path."""

    rows: pa.RecordBatch | None
    too_long: bool = False  # refused for its length: the same shape will be too


class TooLong:
    """Answers found too long for this path, by shape (participants, metrics, resolution,
    whole or paged) and the fewest days found too long: a repeated question, or one over
    more days, takes the general path at once instead of after a refused statement (a
    longer span of the same series holds at least as many rows). Bounded: the oldest
    shapes are forgotten first."""

    def __init__(self, size: int = 4_096) -> None:
        self._size = size
        self._days: OrderedDict[Hashable, int] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _shape(query: DataQuery) -> tuple[Hashable, int]:
        first, last = query.days
        return (query.users, query.metrics, query.resolution, _whole(query)), (last - first).days

    def __contains__(self, query: DataQuery) -> bool:
        shape, days = self._shape(query)
        fewest = self._days.get(shape)
        return fewest is not None and days >= fewest

    def add(self, query: DataQuery) -> None:
        shape, days = self._shape(query)
        with self._lock:
            self._days[shape] = min(days, self._days.get(shape, days))
            self._days.move_to_end(shape)
            while len(self._days) > self._size:
                self._days.popitem(last=False)


def route(query: DataQuery, warm_rollup_rows: int) -> bool:
    """Whether the warm store may answer `query` alone by one statement (no I/O: the
    statement checks the days)."""
    if query.calendar is not None or query.m4_width is not None or query.offset:
        return False
    if query.resolution in _TIERED:  # the statement reads at most DIRECT_ROWS + 1 rows
        return warm_rollup_rows > 0
    return _buckets(query) <= warm_rollup_rows


def _buckets(query: DataQuery) -> int:
    """The most rows an answer can hold: a row per bucket of each day, per series."""
    first, last = query.days
    days = (last - first).days + 1
    per_day = 86_400 // TIERS[query.resolution].bucket_s
    return len(query.users) * len(query.metrics) * days * per_day


def most_rows(query: DataQuery) -> int:
    """The most rows of a whole answer this path reads. A raw or 1m answer's length is not
    known beforehand: DIRECT_ROWS (beyond, the general path's columnar reads win). A 1h or
    1d answer holds at most a row per bucket, and route() sends it here up to
    STRATUM_WARM_ROLLUP_ROWS: 3,650 1d rows of 10 participants took 11.1 ms this way and
    12.2 on the general path (ADBC), 7,133 1h rows 16.7 against 20.3."""
    if query.resolution in _TIERED:
        return DIRECT_ROWS
    return _buckets(query)


def plan(query: DataQuery) -> Plan:
    """The plan of such an answer: one warm segment, every user (`GET /plan` shows the
    general path's, which may read some of these days from the lake)."""
    tier = TIERS[query.resolution]
    segment = Segment(
        "warm", query.resolution, tier.warm_table, query.users, query.start, query.end
    )
    return Plan(query, (segment,))


def _whole(query: DataQuery) -> bool:
    """Whether the statement must read the whole answer (not a page of at most most_rows)."""
    return query.page_size == 0 or query.page_size > most_rows(query)


def _series(prefix: str, fixed: dict[str, int | str]) -> str:
    """The series asked, as a condition on `prefix`user_id and `prefix`metric: equality for a
    column the query fixes. `= ANY(array)` of one value is not planned as one: PostgreSQL 15
    cannot read index order through it, so under the LIMIT it scanned the participant's every
    metric by user_id alone and filtered: 1 participant-day raw read 88 buffers and executed
    in 1.86 ms, against 19 buffers and 0.74 ms with equalities."""
    metric = "= %(metric)s" if "metric" in fixed else "= ANY(%(metrics)s)"
    return f"{prefix}user_id {_user(fixed)} AND {prefix}metric {metric}"


def _user(fixed: dict[str, int | str]) -> str:
    """The participants asked, as a condition on a user_id column (equality for one: the day
    check's `= ANY` of one value cost 0.06-0.33 ms more to plan and run, 1 participant x 1
    week to 1 month of 1h)."""
    return "= %(user_id)s" if "user_id" in fixed else "= ANY(%(users)s)"


def _wire_names(resolution: Resolution, fixed: dict[str, int | str]) -> tuple[str, ...]:
    """The columns the statement sends: not those the query fixes (psycopg would decode them
    row by row), nor avg (sum / count, divided here as every backend does)."""
    names = schema_for(resolution).names
    return tuple(name for name in names if name not in fixed and name != "avg")


def _columnar(query: DataQuery) -> bool:
    """Whether the statement sends each column as one array: for answers that may hold
    COLUMNS_FROM rows or more (a page, or a rollup's buckets, may hold fewer)."""
    rows = limit(query)
    if query.resolution not in _TIERED:
        rows = min(rows, _buckets(query))
    return rows >= COLUMNS_FROM


@dataclass(frozen=True)
class _Statement:
    """A statement's text, the columns it sends and whether it is prepared: the same for
    every query of one shape, so made once per shape (made afresh, its text took ~25 us of a
    ~1 ms answer just after a DuckDB scan)."""

    sql: bytes
    names: tuple[str, ...]
    columnar: bool
    prepared: bool


def _statement_of(query: DataQuery, fixed: dict[str, int | str]) -> _Statement:
    return _shaped(
        query.resolution,
        "user_id" in fixed,
        "metric" in fixed,
        query.after is not None,
        _columnar(query),
    )


@functools.lru_cache(maxsize=64)  # 4 resolutions x fixed or not (2 x 2) x after x columnar
def _shaped(
    resolution: Resolution, one_user: bool, one_metric: bool, after: bool, columnar: bool
) -> _Statement:
    # Only the names matter to the text: the values travel as parameters.
    fixed: dict[str, int | str] = dict.fromkeys(
        ("user_id",) * one_user + ("metric",) * one_metric, 0
    )
    return _Statement(
        _sql(resolution, fixed, after, columnar),
        _wire_names(resolution, fixed),
        columnar,
        _prepared(resolution, one_user, one_metric),
    )


def _prepared(resolution: Resolution, one_user: bool, one_metric: bool) -> bool:
    """Whether the statement is prepared (per connection, by psycopg): only one series of a
    plain table (data_1h, data_1d). Its generic plan, which PostgreSQL takes after five
    planned runs, is the index range scan any values get (user_id and metric by equality, ts
    between bounds), and a run then skips planning: 1 participant x 1 week of 1h took 0.27
    ms prepared against 0.43 planned each time, and 0.36 against 0.99 among the bench's
    other backends (planning a statement runs cold code). Any other is planned with its
    values: a generic plan knows neither the span nor the participants, so over a hypertable
    (raw_data, data_1m's records) it cannot exclude chunks and, with a LIMIT, probed every
    chunk (25 ms instead of 0.7 for a day), and over data_1h for 10 participants x 1 week it
    sorted the whole index range (27 ms against 2.5)."""
    return resolution not in _TIERED and one_user and one_metric


def _sql(resolution: Resolution, fixed: dict[str, int | str], after: bool, columnar: bool) -> bytes:
    tier = TIERS[resolution]
    names = _wire_names(resolution, fixed)  # our constants, never input
    source = tier.warm_table  # table names are the tier's constants
    if tier.stored_in:  # 1m: the records of per-minute days filtered like the rows
        source = minute_rows(lambda p: _series(p, fixed), "%(start)s", "%(end)s")
    rows = (
        f"SELECT {', '.join(names)} FROM {source} m "  # noqa: S608
        f"WHERE {_series('', fixed)} AND ts >= %(start)s AND ts < %(end)s "
        f"{_AFTER if after else ''}"
        "ORDER BY user_id, metric, ts LIMIT %(limit)s"
    )
    # The days' check gates the whole read once, outside the LIMIT: inside, PostgreSQL put a
    # gate on each chunk's scan (58 for `small`'s page of 58 days: planning 1.58 -> 1.29 ms,
    # execution 1.26 -> 0.87).
    servable = _SERVABLE.format(user=_user(fixed), blocking=_BLOCKING[resolution in _TIERED])
    if not columnar:
        order = ", ".join(key for key in ("user_id", "metric", "ts") if key in names)
        return f"SELECT * FROM ({rows}) r WHERE {servable} ORDER BY {order}".encode()  # noqa: S608
    # Aggregated in the order the sorted subquery gives (PostgreSQL's documented way, with
    # nothing in between to reorder it: the gate only runs it or not); _in_order checks it
    # all the same.
    arrays = ", ".join(f"array_agg({name})" for name in names)
    return f"SELECT {arrays} FROM ({rows}) r WHERE {servable}".encode()  # noqa: S608


def limit(query: DataQuery) -> int:
    """Rows the statement reads at most: a page and one row beyond (has_more), or, for a
    whole answer, one beyond most_rows, which tells a too long answer."""
    if query.page_size:
        return min(query.page_size, most_rows(query)) + 1
    return most_rows(query) + 1


def statement(query: DataQuery, fixed: dict[str, int | str]) -> tuple[bytes, dict[str, Any]]:
    """The statement's text and parameters; `fixed`: the query's fixed_columns."""
    return _statement_of(query, fixed).sql, _params(query, fixed)


def _params(query: DataQuery, fixed: dict[str, int | str]) -> dict[str, Any]:
    first, last = query.days
    params: dict[str, Any] = {
        "users": list(query.users),
        "metrics": list(query.metrics),
        "start": query.start,
        "end": query.end,
        "first": first,
        "last": last,
        "limit": limit(query),
        **fixed,
    }
    if query.after is not None:
        params["after_user"] = query.after.user_id
        params["after_metric"] = query.after.metric
        params["after_ts"] = from_us(query.after.ts_us)
    return params


def read(conn: psycopg.Connection, query: DataQuery) -> Direct:
    """Run the statement. Rows None: the general path must answer (a day of the span is
    stale or tiered, the answer is empty, or longer than this path reads)."""
    fixed = fixed_columns(query.users, query.metrics)  # not read: added as constants
    shape = _statement_of(query, fixed)
    cur = _cursor(conn)
    cur.execute(shape.sql, _params(query, fixed), prepare=shape.prepared)
    found = cur.fetchall()
    if shape.columnar:
        columns = _from_arrays(shape.names, found[0])
    else:
        columns = _from_rows(shape.names, found)
    if columns is None:  # a day of the span is blocked, or the answer is empty
        return Direct(None)
    rows = len(columns["ts"])
    if _whole(query) and rows > most_rows(query):
        return Direct(None, too_long=True)
    table = _table(columns, rows, schema_for(query.resolution), fixed)
    return Direct(table if not shape.columnar or _in_order(columns) else _sorted(table))


# One cursor per pooled connection, its loaders registered once (a connection is used by one
# thread at a time, so is its cursor): a cursor made and set up per statement took ~40 us of a
# ~1 ms answer just after a DuckDB scan. It goes with its connection.
_CURSORS: weakref.WeakKeyDictionary[psycopg.Connection, psycopg.Cursor[Any]] = (
    weakref.WeakKeyDictionary()
)


def _cursor(conn: psycopg.Connection) -> psycopg.Cursor[Any]:
    cur = _CURSORS.get(conn)
    if cur is None or cur.closed:
        cur = conn.cursor(binary=True)
        # This cursor's loaders only: timestamps as wire integers, arrays as their bytes
        # (only the columnar statement sends arrays).
        cur.adapters.register_loader("timestamptz", Int8BinaryLoader)
        for array_oid in _ARRAY_OIDS:
            cur.adapters.register_loader(array_oid, _WireBytes)
        _CURSORS[conn] = cur
    return cur


class _WireBytes(Loader):
    """An array as the bytes PostgreSQL sends (the binary format)."""

    format = Format.BINARY

    def load(self, data: Buffer) -> Buffer:
        return data


# The arrays the columnar statement sends (the metric's, text, psycopg loads as a list).
_ARRAY_OIDS = tuple(
    postgres.types[name].array_oid for name in ("int4", "int8", "float8", "timestamptz")
)
# Each column's numbers (timestamps: the wire's integers); the others are float8.
_NUMBERS: dict[str, np.dtype[Any]] = {
    "user_id": np.dtype(np.int32),
    "ts": np.dtype(np.int64),
    "count": np.dtype(np.int64),
}
_FLOAT8 = np.dtype(np.float64)


def _numbers(name: str) -> np.dtype[Any]:
    return _NUMBERS.get(name, _FLOAT8)


def _from_arrays(names: tuple[str, ...], arrays: tuple[Any, ...]) -> dict[str, Any] | None:
    """The columns from their arrays (None: no row, or a NULL, which no warm table holds).
    An array's binary form: its dimensions, a flag set when it holds a NULL, its element
    type, each dimension's length and lower bound, then each element's length and bytes.
    The string column (metric, when several) comes as psycopg loads it: a list."""
    columns: dict[str, Any] = {}
    for name, data in zip(names, arrays, strict=True):
        if data is None:  # array_agg of no row
            return None
        if isinstance(data, list):
            columns[name] = data
            continue
        dimensions, has_null = struct.unpack_from(">ii", data)
        if dimensions != 1 or has_null:
            return None
        element = [("length", ">i4"), ("value", _numbers(name).newbyteorder(">"))]
        columns[name] = np.frombuffer(data, dtype=element, offset=20)["value"]
    return columns


def _from_rows(names: tuple[str, ...], rows: list[tuple[Any, ...]]) -> dict[str, Any] | None:
    """The columns of the rows (None: no row), a column at a time (a third of the time of
    one conversion of the tuples as structs): numbers through numpy, one C loop over each."""
    if not rows:
        return None
    columns: dict[str, Any] = {}
    for name, column in zip(names, zip(*rows, strict=True), strict=True):
        columns[name] = column if name == "metric" else np.array(column, dtype=_numbers(name))
    return columns


def _table(
    columns: dict[str, Any], rows: int, schema: pa.Schema, fixed: dict[str, int | str]
) -> pa.RecordBatch:
    """The answer's batch: the columns read (numpy arrays; timestamps as wire integers), the
    `fixed` ones as constants, avg as sum / count. Each column's kind is known by its name
    (the tiers' schemas), so none is asked of pyarrow: with that, 167 rows of 1h took 0.136
    ms instead of 0.170 just after a DuckDB scan (cold caches, as a server meets them
    between requests)."""
    arrays = []
    for field in schema:
        name = field.name
        if name in fixed:
            arrays.append(constant(fixed[name], field.type, rows))
        elif name == "metric":
            arrays.append(pa.array(columns[name], type=field.type))
        elif name == "avg":  # numpy divides as float64 whatever the count's integer type
            arrays.append(_numbers_array(field.type, columns["sum"] / columns["count"], "avg"))
        elif name == "ts":  # numpy adds the epoch to all at once
            arrays.append(_numbers_array(field.type, columns["ts"] + _WIRE_EPOCH_US, "ts"))
        else:
            arrays.append(_numbers_array(field.type, columns[name], name))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _numbers_array(kind: pa.DataType, values: np.ndarray, name: str) -> pa.Array:
    """`values` (column `name`'s numbers; timestamps as int64 microseconds) as an Arrow
    array of `kind` over their buffer, in native order (a copy only of a strided or
    big-endian column). pa.array's checks cost more than this wrap."""
    native = np.ascontiguousarray(values, dtype=_numbers(name))
    return pa.Array.from_buffers(kind, len(native), [None, pa.py_buffer(native)])


def _in_order(columns: dict[str, Any]) -> bool:
    """Whether the rows come in key order (user_id, metric, ts), each after the one before.
    The statement gives them so: an aggregate's order follows its sorted subquery's in
    PostgreSQL, though not by the SQL standard, so the arrays are checked (numpy compares
    neighbours: 9 us for a participant-day raw, against 155 for sorting it with pyarrow)."""
    later = columns["ts"][1:] > columns["ts"][:-1]
    for name in ("metric", "user_id"):  # the next key decides where this one ties
        if name in columns:
            key = np.asarray(columns[name])
            later = (key[1:] > key[:-1]) | ((key[1:] == key[:-1]) & later)
    return bool(later.all())


def _sorted(table: pa.RecordBatch) -> pa.RecordBatch:
    return table.sort_by([(name, "ascending") for name in ("user_id", "metric", "ts")])
