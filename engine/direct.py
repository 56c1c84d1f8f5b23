"""Small answers the warm store gives alone, in one statement (issue 13, point 1).

The general path costs two warm-store round trips before the first row (the catalog, then
the rows through ADBC, which prepares each statement and so adds its own), while a short
question to a table answers in one. Two kinds of answer need no catalog at all:
- a small 1h or 1d answer: the planner serves those tiers from the warm store whole
  (STRATUM_WARM_ROLLUP_ROWS), whatever the lake holds;
- a raw or 1m answer over days the lake does not serve (the grace period, or days written
  since their sync), as the cached catalog of every participant asked says: the planner
  sends every such day to the warm store.
What the planner would still have to know, the statement finds out itself, in the same
snapshot as the rows (so nothing can change between the two): whether any day of the span
has rollups lagging raw (those days are rolled up from raw on the fly), and for raw and 1m,
whether the catalog of a participant asked changed since its cached entry was loaded
(catalog_changes: a day synced, verified or tiered since; one index probe, where reading
the lake days themselves cost a millisecond more). Any of these makes it answer with a
single "blocked" row instead of the rows, and the request takes the general path. The same
segments come out as the planner's, so answers, plans and cursors are the same whichever
path read them.

Only answers of at most DIRECT_ROWS rows: psycopg decodes rows one by one (about 2 us a
row with the Arrow conversion), so it beats the general path's catalog round trip and
ADBC's extra ones on small answers only. Measured on the `small` preset, side by side with
the general path in one run: 164 hourly rows 1.43 vs 2.02 ms; 828 hourly rows 4.72 vs 3.93;
1,389 raw rows 2.70 vs 2.12. A raw or 1m answer's size is not known beforehand: the
statement reads at most DIRECT_ROWS + 1 rows, and a longer answer takes the general path
(and its shape is remembered: the next one takes it at once).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import psycopg
import pyarrow as pa

from engine.catalog import ENTRY_OUTDATED, CatalogSource
from engine.plan import Plan, Segment
from engine.query import DataQuery, from_us
from engine.shapes import schema_for
from engine.tiers import TIERED, TIERS, minute_rows

DIRECT_ROWS = 500

# Any day of the span whose rollups lag raw; for raw and 1m also any change to the catalog of
# a participant asked that its cached entry may not have seen (catalog_changes, as the
# catalog source checks it, or an entry loaded below the floor of pruned changes, whose
# record may be gone): the entry said no day of the span is in the lake or tiered, and only
# such a change can make one so.
_STALE = (
    "EXISTS (SELECT 1 FROM day_state WHERE user_id = ANY(%(users)s) "
    "AND day BETWEEN %(first)s AND %(last)s AND change_seq > refreshed_seq)"
)
_CHANGED = (
    "EXISTS (SELECT 1 FROM unnest(%(users)s::int[], %(horizons)s::bigint[]) AS p(user_id, h) "  # noqa: S608
    f"WHERE {ENTRY_OUTDATED.format(user_id='p.user_id', horizon='p.h')})"
)
# Known to be longer than this path reads: the refresh counts every day's rows, and a span
# holding part of its days is taken to hold that share of their rows (an estimate: a span of
# days not refreshed yet, or denser than its share, is cut off by the statement's LIMIT).
_LONG = (
    "(SELECT coalesce(sum({column}), 0) FROM day_counts WHERE user_id = ANY(%(users)s) "
    "AND metric = ANY(%(metrics)s) AND day BETWEEN %(first)s AND %(last)s) "
    "* %(share)s::float8 > %(most)s"
)
_COUNT_COLUMN = {"raw": "rows_raw", "1m": "rows_1m"}
_AFTER = "AND (user_id, metric, ts) > (%(after_user)s, %(after_metric)s, %(after_ts)s) "


@dataclass(frozen=True)
class Direct:
    """What the statement read: the rows, or None when a day of the span needs the
    general path."""

    rows: pa.Table | None
    too_long: bool = False  # refused for its length: the same shape will be too


@dataclass(frozen=True)
class Route:
    """A query the statement may answer, with the horizons of the cached catalog entries
    that said so (raw and 1m; empty for 1h and 1d)."""

    query: DataQuery
    horizons: tuple[int, ...] = ()


class TooLong:
    """Shapes of answers found too long for this path (participants, metrics, resolution,
    days, whole or paged): a repeated question takes the general path at once instead of
    after a refused statement. Bounded: the oldest shapes are forgotten first."""

    def __init__(self, size: int = 4_096) -> None:
        self._size = size
        self._shapes: OrderedDict[Hashable, None] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def shape(query: DataQuery) -> Hashable:
        first, last = query.days
        return (query.users, query.metrics, query.resolution, (last - first).days, _whole(query))

    def __contains__(self, query: DataQuery) -> bool:
        return self.shape(query) in self._shapes

    def add(self, query: DataQuery) -> None:
        with self._lock:
            self._shapes[self.shape(query)] = None
            while len(self._shapes) > self._size:
                self._shapes.popitem(last=False)


def route(query: DataQuery, catalogs: CatalogSource, warm_rollup_rows: int) -> Route | None:
    """The route when the warm store may answer `query` alone by one statement (no I/O:
    only the query and the cached catalog; the statement checks the rest), else None."""
    if query.calendar is not None or query.m4_width is not None or query.offset:
        return None
    tier = TIERS[query.resolution]
    first, last = query.days
    if tier not in TIERED:
        days = (last - first).days + 1
        rows = len(query.users) * len(query.metrics) * days * (86_400 // tier.bucket_s)
        return Route(query) if rows <= min(warm_rollup_rows, DIRECT_ROWS) else None
    # Raw and 1m: only where the cached catalog says no day is in the lake or tiered (a
    # participant not cached yet, or with such days in the span, takes the general path).
    horizons = []
    for user_id in query.users:
        entry = catalogs.cached(user_id)
        if entry is None:
            return None
        if _overlaps(entry.lake.get(tier.lake_table, ()), first, last):
            return None
        if _overlaps(entry.tiered, first, last):
            return None
        horizons.append(entry.horizon)
    return Route(query, tuple(horizons))


def _overlaps(ranges: Sequence[tuple[date, date]], first: date, last: date) -> bool:
    return any(lo <= last and hi >= first for lo, hi in ranges)


def plan(query: DataQuery) -> Plan:
    """The plan the planner makes for such an answer: one warm segment, every user."""
    tier = TIERS[query.resolution]
    segment = Segment(
        "warm", query.resolution, tier.warm_table, query.users, query.start, query.end
    )
    return Plan(query, (segment,))


def _whole(query: DataQuery) -> bool:
    """Whether the statement must read the whole answer (not a page of at most DIRECT_ROWS)."""
    return query.page_size == 0 or query.page_size > DIRECT_ROWS


def _sql(query: DataQuery) -> str:
    tier = TIERS[query.resolution]
    checks = [] if tier.resolution == "raw" else [_STALE]
    long = "false"
    if tier in TIERED:
        checks.append(_CHANGED)
        if _whole(query):
            long = _LONG.format(column=_COUNT_COLUMN[tier.resolution])
            checks.append("long")
    if tier.resolution == "raw":
        columns = "user_id, metric, ts, value"
        blocked = "long::int::smallint, NULL::text, NULL::timestamptz, NULL::float8"
    else:
        columns = "user_id, metric, ts, count, sum, min, max, sum / count"
        blocked = (
            "long::int::smallint, NULL::text, NULL::timestamptz, NULL::bigint, "
            "NULL::float8, NULL::float8, NULL::float8, NULL::float8"
        )
    after = _AFTER if query.after is not None else ""
    source = tier.warm_table
    if tier.stored_in:  # 1m: the records of per-minute days filtered like the rows
        source = minute_rows(
            lambda p: f"{p}user_id = ANY(%(users)s) AND {p}metric = ANY(%(metrics)s)",
            "%(start)s",
            "%(end)s",
        )
    # The checks run once (a one-time filter): when they block, no row is read, and one row
    # without a metric, which no answer row lacks, says so (and whether the answer is too
    # long for this path). Table names are the tier table's.
    return (
        f"WITH checked AS MATERIALIZED (SELECT {long} AS long), "  # noqa: S608
        f"blocked AS MATERIALIZED (SELECT {' OR '.join(checks)} AS yes, long FROM checked) "
        f"SELECT {blocked} FROM blocked WHERE yes "
        f"UNION ALL (SELECT {columns} FROM {source} m "
        "WHERE user_id = ANY(%(users)s) AND metric = ANY(%(metrics)s) "
        "AND ts >= %(start)s AND ts < %(end)s "
        f"{after}AND NOT (SELECT yes FROM blocked) "
        "ORDER BY user_id, metric, ts LIMIT %(limit)s)"
    )


def limit(query: DataQuery) -> int:
    """Rows the statement reads at most: a page and one row beyond (has_more), or, for a
    whole answer, one beyond DIRECT_ROWS, which tells a too long answer."""
    if query.page_size:
        return min(query.page_size, DIRECT_ROWS) + 1
    return DIRECT_ROWS + 1


def read(conn: psycopg.Connection, route: Route) -> Direct:
    """Run the statement. Rows None: the general path must answer (a day of the span is
    stale, the catalog changed, or the answer is longer than this path reads)."""
    query = route.query
    first, last = query.days
    params: dict[str, Any] = {
        "users": list(query.users),
        "metrics": list(query.metrics),
        "start": query.start,
        "end": query.end,
        "first": first,
        "last": last,
        "horizons": list(route.horizons),
        "limit": limit(query),
        "most": DIRECT_ROWS,
        "share": (query.end - query.start) / (timedelta(days=1) * ((last - first).days + 1)),
    }
    if query.after is not None:
        params["after_user"] = query.after.user_id
        params["after_metric"] = query.after.metric
        params["after_ts"] = from_us(query.after.ts_us)
    # A prepared (generic) plan over a hypertable cannot exclude chunks, and with a LIMIT
    # PostgreSQL finds it cheap: it then probes every chunk (25 ms instead of 0.7 for a
    # day). raw_data and data_1m are sent unprepared, planned with their values each time.
    prepare = None if TIERS[query.resolution] not in TIERED else False
    with conn.cursor(binary=True) as cur:
        cur.execute(_sql(query).encode(), params, prepare=prepare)
        found = cur.fetchall()
    if found and found[0][1] is None:
        return Direct(None, too_long=bool(found[0][0]))
    if _whole(query) and len(found) > DIRECT_ROWS:
        return Direct(None, too_long=True)
    return Direct(_table(found, schema_for(query.resolution)))


def _table(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    # One conversion of the row tuples as structs: half the time of one per column.
    structs = pa.array(rows, type=pa.struct(list(schema)))
    return pa.Table.from_batches([pa.RecordBatch.from_struct_array(structs)], schema=schema)
