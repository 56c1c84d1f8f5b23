"""M4 downsampling of raw answers: per pixel column, each series' first, last, lowest and
highest row.

A line chart `width` pixels wide draws, inside one pixel column, a vertical stroke from the
column's lowest to its highest value, joined to its neighbours through the column's first
and last rows. Those four rows therefore draw the same pixels as every row of the column
(Jugel et al., "M4: a visualization-oriented time series data aggregation", VLDB 2014), so a
year of 1 Hz heart rate (31M rows) is drawn exactly from at most 4 x width rows.

Columns split the query's [start, end) into `width` equal parts: row ts belongs to column
floor((ts - start) / ((end - start) / width)), both in microseconds, as a double (the same
arithmetic in DuckDB, PostgreSQL and numpy). Each store reduces its own segments in SQL;
where a column straddles a segment boundary (the lake/warm split of a day), both sides keep
their four rows: a few more real rows, the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from engine.query import to_us


@dataclass(frozen=True)
class M4:
    start: datetime  # the query's start: column 0 begins here
    end: datetime
    width: int  # pixel columns

    @property
    def start_us(self) -> int:
        return to_us(self.start)

    @property
    def column_us(self) -> float:
        """Width of one pixel column in microseconds (a double, as SQL computes it)."""
        return (to_us(self.end) - to_us(self.start)) / self.width


def duckdb_sql(rows_sql: str, after_sql: str, tail_sql: str) -> str:
    """M4 over `rows_sql` (user_id, metric, ts, value) in DuckDB, binding $m4_start (µs)
    and $m4_column (µs per column). `after_sql` filters the reduced rows (a cursor's
    position: applied after the reduction, so a resumed answer keeps the same columns);
    `tail_sql` is the ORDER BY / LIMIT."""
    return f"""
WITH kept AS ({rows_sql}),
columns AS (
    SELECT user_id, metric,
        floor((epoch_us(ts) - $m4_start) / $m4_column) AS col,
        min(ts) AS first_ts, arg_min(value, ts) AS first_value,
        max(ts) AS last_ts, arg_max(value, ts) AS last_value,
        arg_min(ts, value) AS low_ts, min(value) AS low_value,
        arg_max(ts, value) AS high_ts, max(value) AS high_value
    FROM kept GROUP BY user_id, metric, col
),
points AS (
    SELECT user_id, metric, first_ts AS ts, first_value AS value FROM columns
    UNION SELECT user_id, metric, last_ts, last_value FROM columns
    UNION SELECT user_id, metric, low_ts, low_value FROM columns
    UNION SELECT user_id, metric, high_ts, high_value FROM columns
)
SELECT user_id, metric, ts, value FROM points WHERE {after_sql} {tail_sql}"""  # noqa: S608


def postgres_sql(
    table: str, where_sql: str, start_param: str, column_param: str, after_sql: str, tail_sql: str
) -> str:
    """M4 over `table` rows matching `where_sql` in PostgreSQL, which has no arg_min: one
    pass finds each column's first and last ts and lowest and highest value, a second the
    first ts holding each extreme, a third fetches those rows. (Twice as fast as four window
    sorts.) `start_param` / `column_param` are the placeholders of the column origin
    (timestamptz) and the column width in µs (double). The offset in µs comes from float8
    date_part, rounded: exact for spans under a century at µs resolution (EXTRACT's numeric
    is exact too, and slower)."""
    offset_us = f"round(date_part('epoch', ts - {start_param}::timestamptz) * 1000000)"
    return f"""
WITH kept AS MATERIALIZED (
    SELECT user_id, metric, ts, value, floor({offset_us} / {column_param}::float8) AS col
    FROM {table} WHERE {where_sql}
),
columns AS (
    SELECT user_id, metric, col, min(ts) AS first_ts, max(ts) AS last_ts,
        min(value) AS low_value, max(value) AS high_value
    FROM kept GROUP BY user_id, metric, col
),
extremes AS (
    SELECT k.user_id, k.metric, k.col, c.first_ts, c.last_ts,
        min(k.ts) FILTER (WHERE k.value = c.low_value) AS low_ts,
        min(k.ts) FILTER (WHERE k.value = c.high_value) AS high_ts
    FROM kept AS k JOIN columns AS c USING (user_id, metric, col)
    GROUP BY k.user_id, k.metric, k.col, c.first_ts, c.last_ts
)
SELECT user_id, metric, ts, value FROM (
    SELECT k.user_id, k.metric, k.ts, k.value
    FROM kept AS k JOIN extremes AS e USING (user_id, metric, col)
    WHERE k.ts IN (e.first_ts, e.last_ts, e.low_ts, e.high_ts)
) AS points
WHERE {after_sql}
{tail_sql}"""  # noqa: S608
