"""Pages: cutting one out of the rows read for it, and deep pages without reading every
earlier row.

Page N of size S starts at row offset (N-1)*S. Walking the answer's series in order
(user_id, metric), whole series and then whole days are skipped using the row counts the
rollup refresh keeps (day_counts); the page then starts at the first day that holds the
offset, and only rows inside that one day are read and discarded. The span's partial
first and last days (a span from 08:00) are counted exactly by the caller, from the rows
the answer holds on them. A day whose count is not known exactly (its rollups lag its raw
rows) stops the skipping there: the rest is skipped row by row, still correct.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import TypeVar

import psycopg
import pyarrow as pa

from engine.catalog import Coverage
from engine.query import DataQuery, Key, to_us
from engine.timestamps import midnight
from engine.timings import StageTimes

_Rows = TypeVar("_Rows", pa.Table, pa.RecordBatch)  # a page is cut from either

SeriesDays = Callable[[int, str], Sequence[tuple[date, int]]]  # (user, metric) -> rows per day
# Rows per (user, metric) the answer holds in [start, end): how partial days are counted.
SeriesRows = Callable[[datetime, datetime], Mapping[tuple[int, str], int]]

# The day_counts column per resolution (a day holds one 1d bucket per series). Our constants:
# the SQL below takes identifiers from here, never from input.
_COUNT_COLUMN = {"raw": "rows_raw", "1m": "rows_1m", "1h": "rows_1h", "1d": "1"}
# One series at a time, by equalities on the (user_id, metric, day) key, whose index carries
# the counts (migration 014): filtering the table by `= ANY` of every participant and metric
# took 6-11 ms for 10 x 3 series over a year (10,950 rows), read this way 2.6 ms.
_SERIES_TOTALS = (
    "SELECT u, m, s.total FROM unnest(%(users)s::integer[]) AS u "
    "CROSS JOIN unnest(%(metrics)s::text[]) AS m CROSS JOIN LATERAL ("
    "SELECT sum({column}) AS total FROM day_counts "
    "WHERE user_id = u AND metric = m AND day BETWEEN %(first)s AND %(last)s) AS s "
    "WHERE s.total IS NOT NULL"
)
_SERIES_DAYS = (
    "SELECT day, {column} FROM day_counts WHERE user_id = %(user_id)s AND metric = %(metric)s "
    "AND day BETWEEN %(first)s AND %(last)s ORDER BY day"
)


def count_statements(resolution: str) -> tuple[bytes, bytes]:
    """The statements that read day_counts for a deep page of `resolution`: each series'
    rows over the span's whole days, and one series' rows per day."""
    column = _COUNT_COLUMN[resolution]
    totals, days = (sql.format(column=column).encode() for sql in (_SERIES_TOTALS, _SERIES_DAYS))
    return totals, days


def cut_page(query: DataQuery, rows: _Rows) -> tuple[_Rows, bool, str | None]:
    """(at most `page_size` of `rows`, whether more follow, the cursor after the page's last
    row). Readers ask for one row beyond the page: its presence is what `has_more` says."""
    has_more = rows.num_rows > query.page_size
    page = rows.slice(0, query.page_size)
    if not has_more:
        return page, False, None
    last = page.num_rows - 1
    # The timestamp's own integer (microseconds): casting the column to read one value cost
    # 0.1 ms of a 4.5 ms page, cold.
    key = Key(
        int(page.column("user_id")[last].as_py()),
        str(page.column("metric")[last].as_py()),
        int(page.column("ts")[last].value),
    )
    return page, True, query.cursor_after(key)


def partial_days(query: DataQuery) -> list[tuple[date, datetime, datetime]]:
    """The span's first and last days when it holds only part of them: (day, and the part
    of it inside the span)."""
    first, last = query.days
    parts = []
    if query.start != midnight(first):
        parts.append((first, query.start, min(query.end, midnight(first + timedelta(days=1)))))
    if query.end != midnight(last + timedelta(days=1)) and not (parts and last == first):
        parts.append((last, max(query.start, midnight(last)), query.end))
    return parts


def uncertain_days(
    query: DataQuery, user_id: int, stale: Coverage, partial_known: bool = False
) -> list[date]:
    """Days of this user's span whose row count day_counts cannot give exactly (its partial
    days are not among them once they are counted: `partial_known`)."""
    first, last = query.days
    days = set() if partial_known else {day for day, _, _ in partial_days(query)}
    for lo, hi in stale.of(user_id):
        day = max(lo, first)
        while day <= min(hi, last):
            days.add(day)
            day += timedelta(days=1)
    return sorted(days)


def locate(
    query: DataQuery,
    offset: int,
    totals: Mapping[tuple[int, str], int],
    series_days: SeriesDays,
    stale: Coverage,
    partial: Mapping[tuple[int, str, date], int] | None = None,
) -> tuple[Key | None, int]:
    """(after, skip): start streaming after `after`, then drop `skip` rows, to reach offset.

    `totals` holds each series' rows over the span's days; `series_days(user, metric)` its
    rows per day, asked for only where the offset falls, or where some day's count is not
    exact, so a deep page reads one series' days, not every series' days. With `partial`
    (the exact rows of each series on the span's partial days), `totals` and `series_days`
    cover the whole days only.
    """
    if offset <= 0:
        return None, 0
    skipped = 0
    for user_id in query.users:
        uncertain = uncertain_days(query, user_id, stale, partial is not None)
        for metric in query.metrics:
            counted = {
                day: n for (u, m, day), n in (partial or {}).items() if (u, m) == (user_id, metric)
            }
            total = totals.get((user_id, metric), 0) + sum(counted.values())
            if not uncertain and skipped + total <= offset:
                skipped += total  # the whole series lies before the page
                continue
            known = {day: n for day, n in series_days(user_id, metric) if day not in uncertain}
            known.update(counted)
            for day in sorted({*known, *uncertain}):
                rows = known.get(day)
                if rows is None or skipped + rows > offset:
                    before_day = to_us(max(query.start, midnight(day))) - 1
                    return Key(user_id, metric, before_day), offset - skipped
                skipped += rows
    # The offset lies past the end of the answer: start after the last possible key.
    return Key(query.users[-1], query.metrics[-1], to_us(query.end)), 0


def locate_by_counts(
    conn: psycopg.Connection,
    query: DataQuery,
    stale: Coverage,
    times: StageTimes | None = None,
    series_rows: SeriesRows | None = None,
) -> tuple[Key | None, int]:
    """`locate` for the query's page, with the series' row counts read from day_counts
    (its statements counted in `times`' warm_statements), and those of the span's partial
    days from `series_rows` (else the skip stops at a partial first day)."""
    totals_sql, days_sql = count_statements(query.resolution)
    first, last = query.days
    partial: dict[tuple[int, str, date], int] | None = None
    if series_rows is not None:
        partial = {}
        for day, start, end in partial_days(query):
            partial.update({(u, m, day): n for (u, m), n in series_rows(start, end).items()})
            first += timedelta(days=1) if day == first else timedelta(0)
            last -= timedelta(days=1) if day == last else timedelta(0)
    span = {
        "users": list(query.users),
        "metrics": list(query.metrics),
        "first": first,
        "last": last,
    }
    rows = conn.execute(totals_sql, span)
    if times is not None:
        times.count("warm_statements")
    totals = {(u, m): int(n) for u, m, n in rows}

    def series_days(user_id: int, metric: str) -> list[tuple[date, int]]:
        params = {**span, "user_id": user_id, "metric": metric}
        days = conn.execute(days_sql, params)
        if times is not None:
            times.count("warm_statements")
        return [(day, int(n)) for day, n in days]

    return locate(query, query.offset, totals, series_days, stale, partial)
