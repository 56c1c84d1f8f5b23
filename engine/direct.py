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
took 2.4 ms read and converted, against 5.0 as datetimes converted as structs. A raw or 1m
answer's size is not known beforehand: the statement reads at most DIRECT_ROWS + 1 rows,
and a longer answer takes the general path (and its shape is remembered: the next one takes
it at once). A 1h or 1d answer is at most a row per bucket: up to STRATUM_WARM_ROLLUP_ROWS
of them come this way (most_rows).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
from psycopg.types.numeric import Int8BinaryLoader

from engine.plan import Plan, Segment
from engine.query import DataQuery, from_us, to_us
from engine.shapes import TS, constant, fixed_columns, schema_for, select_list
from engine.tiers import TIERED, TIERS, minute_rows

DIRECT_ROWS = 2048

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

    rows: pa.Table | None
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
    if TIERS[query.resolution] in TIERED:  # the statement reads at most DIRECT_ROWS + 1 rows
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
    if TIERS[query.resolution] in TIERED:
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


def _sql(query: DataQuery, fixed: dict[str, int | str]) -> str:
    tier = TIERS[query.resolution]
    # Not the columns the query fixes: psycopg would decode them row by row.
    columns = select_list(query.resolution, fixed)
    after = _AFTER if query.after is not None else ""
    source = tier.warm_table  # table names are the tier's constants
    if tier.stored_in:  # 1m: the records of per-minute days filtered like the rows
        source = minute_rows(lambda p: _series(p, fixed), "%(start)s", "%(end)s")
    return (
        f"SELECT {columns} FROM {source} m "  # noqa: S608
        f"WHERE {_series('', fixed)} AND ts >= %(start)s AND ts < %(end)s {after}"
        f"AND {_SERVABLE.format(user=_user(fixed), blocking=_BLOCKING[tier in TIERED])} "
        "ORDER BY user_id, metric, ts LIMIT %(limit)s"
    )


def limit(query: DataQuery) -> int:
    """Rows the statement reads at most: a page and one row beyond (has_more), or, for a
    whole answer, one beyond most_rows, which tells a too long answer."""
    if query.page_size:
        return min(query.page_size, most_rows(query)) + 1
    return most_rows(query) + 1


def statement(query: DataQuery, fixed: dict[str, int | str]) -> tuple[bytes, dict[str, Any]]:
    """The statement's text and parameters; `fixed`: the query's fixed_columns."""
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
    return _sql(query, fixed).encode(), params


def read(conn: psycopg.Connection, query: DataQuery) -> Direct:
    """Run the statement. Rows None: the general path must answer (a day of the span is
    stale or tiered, the answer is empty, or longer than this path reads)."""
    fixed = fixed_columns(query.users, query.metrics)  # not read: added as constants
    sql, params = statement(query, fixed)
    # Never a prepared (generic) plan: it knows neither the span nor the participants. Over a
    # hypertable it cannot exclude chunks and, with a LIMIT, probes every chunk (25 ms
    # instead of 0.7 for a day); data_1h's for 10 participants x 1 week sorted its whole
    # index range (27 ms against 2.5 planned with the values). Planning costs ~0.1-0.2 ms.
    with conn.cursor(binary=True) as cur:
        cur.adapters.register_loader("timestamptz", Int8BinaryLoader)  # this cursor's only
        cur.execute(sql, params, prepare=False)
        found = cur.fetchall()
    if not found:  # a day of the span is blocked, or the answer is empty
        return Direct(None)
    if _whole(query) and len(found) > most_rows(query):
        return Direct(None, too_long=True)
    return Direct(_table(found, schema_for(query.resolution), fixed))


def _table(rows: list[tuple[Any, ...]], schema: pa.Schema, fixed: dict[str, int | str]) -> pa.Table:
    """The rows (the schema's columns but the `fixed` ones) as a table, a column at a time
    (a third of the time of one conversion of the tuples as structs): numbers through numpy
    (one C loop over the column, which pyarrow then takes without a copy; the warm tables'
    columns are NOT NULL), timestamps as wire integers, the fixed columns as constants."""
    columns = iter(zip(*rows, strict=True))
    arrays = []
    for field in schema:
        if field.name in fixed:
            arrays.append(constant(fixed[field.name], field.type, len(rows)))
            continue
        column = next(columns, ())
        if field.name == "ts":  # numpy adds the epoch to all at once
            arrays.append(pa.array(np.array(column, dtype=np.int64) + _WIRE_EPOCH_US).view(TS))
        elif pa.types.is_string(field.type):
            arrays.append(pa.array(column, type=field.type))
        else:
            arrays.append(pa.array(np.array(column, dtype=field.type.to_pandas_dtype())))
    return pa.Table.from_arrays(arrays, schema=schema)
