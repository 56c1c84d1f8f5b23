"""Warm-store executor: PostgreSQL → Arrow via ADBC, streamed in keyset chunks.

ADBC materialises a parameterised result whole, so a segment is read as a series of
`ORDER BY user_id, metric, ts LIMIT n` queries, each resuming after the last key of the
previous one (the primary key's order, so every chunk is an index range scan). Memory per
segment is one chunk, however long the span.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa

from engine.errors import WarmStoreBusy, WarmStoreUnavailable
from engine.m4 import M4, postgres_sql
from engine.plan import Segment
from engine.query import EPOCH, Key, from_us, to_us
from engine.shapes import conform, schema_for
from engine.tiers import RAW, TIERS, minute_rows
from engine.timings import StageTimes

log = logging.getLogger(__name__)

CHUNK_ROWS = 262_144


class WarmPool:
    """A small pool of autocommit ADBC connections (each used by one thread at a time).

    When the server restarts, every idle connection is dead: the first query that finds one
    so drops them all and runs once more on a fresh connection, so queries recover as soon
    as the server is back instead of failing once per pooled connection.
    """

    def __init__(self, url: str, size: int) -> None:
        self.url = url
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)

    def _connect(self) -> Any:
        try:
            conn = adbc.connect(self.url, autocommit=True)
        except adbc_driver_manager.Error as exc:
            raise _unreachable(exc) from None
        with conn.cursor() as cur:
            cur.execute("SET timezone = 'UTC'")  # date_trunc buckets in UTC
        return conn

    def fetch(self, sql: str, params: tuple[Any, ...]) -> pa.Table:
        """Run one query and return its whole result."""
        if not self._slots.acquire(timeout=30):
            raise WarmStoreBusy("all warm-store connections are busy")
        try:
            reused, conn = self._checkout()
            try:
                return self._run(conn, sql, params)
            except adbc_driver_manager.OperationalError as exc:
                if not reused:
                    raise _unreachable(exc) from None
            # A connection from before a server restart: so are the other idle ones.
            self.close()
            try:
                return self._run(self._connect(), sql, params)
            except adbc_driver_manager.OperationalError as exc:
                raise _unreachable(exc) from None
        finally:
            self._slots.release()

    def _run(self, conn: Any, sql: str, params: tuple[Any, ...]) -> pa.Table:
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                table = cur.fetch_arrow_table()
        except BaseException:  # broken or interrupted mid-use: never reuse it
            _close(conn)
            raise
        self._idle.put(conn)
        return table

    def _checkout(self) -> tuple[bool, Any]:
        try:
            return True, self._idle.get_nowait()
        except queue.Empty:
            return False, self._connect()

    def close(self) -> None:
        while True:
            try:
                _close(self._idle.get_nowait())
            except queue.Empty:
                return


def _close(conn: Any) -> None:
    with suppress(adbc_driver_manager.Error):
        conn.close()


def _unreachable(exc: Exception) -> WarmStoreUnavailable:
    # The driver's text names hosts and sockets: it goes to the server log, not to clients.
    log.warning("warm store unreachable: %s", exc)
    return WarmStoreUnavailable("the warm store is unreachable")


def _placeholders(start: int, count: int) -> str:
    return ", ".join(f"${i}" for i in range(start, start + count))


def _utc(n: int) -> str:
    """Placeholder $n of a naive UTC timestamp, as timestamptz.

    Bound timestamptz parameters cost round trips: for each statement the ADBC driver
    wraps them in BEGIN, reads and sets the session time zone, and restores it (seven
    round trips instead of two). A naive UTC timestamp needs none of that, and
    `AT TIME ZONE 'UTC'` is immutable, so chunks are still excluded when planning."""
    return f"(${n}::timestamp AT TIME ZONE 'UTC')"


def _sql(segment: Segment, metrics: tuple[str, ...], inclusive: bool, m4: bool = False) -> str:
    users = _placeholders(1, len(segment.users))
    n = len(segment.users) + 1
    names = _placeholders(n, len(metrics))
    n += len(metrics)
    span = f"ts >= {_utc(n)} AND ts < {_utc(n + 1)}"
    after = (
        f"(user_id, metric, ts) {'>=' if inclusive else '>'} (${n + 2}, ${n + 3}, {_utc(n + 4)})"
    )
    limit = f"${n + 5}"
    selection = f"user_id IN ({users}) AND metric IN ({names}) AND {span}"
    where = f"{selection} AND {after}"
    # Table names and bucket units come from engine.tiers.TIERS, never from a request.
    if m4:
        # The keyset position filters the reduced rows, so every chunk sees whole columns.
        return postgres_sql(
            RAW.warm_table,
            selection,
            _utc(n + 6),
            f"${n + 7}",
            after,
            f"ORDER BY user_id, metric, ts LIMIT {limit}",
        )
    if segment.resolution == "raw":
        return (
            f"SELECT user_id, metric, ts, value FROM {RAW.warm_table} WHERE {where} "  # noqa: S608
            f"ORDER BY user_id, metric, ts LIMIT {limit}"
        )
    if segment.rollup_from_raw:
        unit = TIERS[segment.resolution].bucket_unit
        return (
            f"SELECT user_id, metric, date_trunc('{unit}', ts) AS bucket, count(*), "  # noqa: S608
            f"sum(value), min(value), max(value), sum(value) / count(*) FROM {RAW.warm_table} "
            f"WHERE {where} GROUP BY user_id, metric, bucket "
            f"ORDER BY user_id, metric, bucket LIMIT {limit}"
        )
    tier = TIERS[segment.resolution]
    source = tier.warm_table
    if tier.stored_in:  # 1m: the records of per-minute days filtered like the rows
        source = minute_rows(
            lambda p: f"{p}user_id IN ({users}) AND {p}metric IN ({names})",
            _utc(n),
            _utc(n + 1),
        )
    return (
        f"SELECT user_id, metric, ts, count, sum, min, max, sum / count FROM {source} m "  # noqa: S608
        f"WHERE {where} ORDER BY user_id, metric, ts LIMIT {limit}"
    )


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def _ceil(moment: datetime, bucket: timedelta) -> datetime:
    """The first bucket boundary at or after `moment` (buckets are aligned to the epoch)."""
    remainder = (moment - EPOCH) % bucket
    return moment if not remainder else moment + (bucket - remainder)


def stream_warm(
    pool: WarmPool,
    segment: Segment,
    metrics: tuple[str, ...],
    after: Key | None,
    limit: int | None,
    m4: M4 | None = None,
    times: StageTimes | None = None,
) -> Iterator[pa.RecordBatch]:
    """Rows of `segment` after `after`, in (user_id, metric, ts) order, at most `limit`;
    with `m4` (raw segments), only each pixel column's first, last, lowest and highest row
    per series."""
    if m4 is not None and segment.resolution != "raw":
        raise ValueError("M4 reduces raw rows only")
    schema = schema_for(segment.resolution)
    bucket = timedelta(seconds=TIERS[segment.resolution].bucket_s)
    span = (segment.start, segment.end)
    if segment.rollup_from_raw:
        # An answer holds the buckets that *start* in [start, end), whole, as rollup tables
        # and the lake do: read the raw rows of exactly those buckets.
        span = (_ceil(segment.start, bucket), _ceil(segment.end, bucket))
    # With no `after`, start before every key: user ids are >= 0.
    position = after or Key(-1, "", to_us(segment.start))
    remaining = limit
    while remaining is None or remaining > 0:
        chunk = CHUNK_ROWS if remaining is None else min(CHUNK_ROWS, remaining)
        # A bucket computed from raw covers [start, start + bucket): resume at the next one.
        inclusive = segment.rollup_from_raw and position.user_id >= 0
        resume_ts = from_us(position.ts_us) + (bucket if inclusive else timedelta(0))
        params = (
            *segment.users,
            *metrics,
            *(_naive_utc(moment) for moment in span),
            position.user_id,
            position.metric,
            _naive_utc(resume_ts),
            chunk,
        )
        if m4 is not None:
            params = (*params, _naive_utc(m4.start), m4.column_us)
        table = pool.fetch(_sql(segment, metrics, inclusive, m4 is not None), params)
        if times is not None:
            times.count("warm_statements")
        if table.num_rows == 0:
            return
        for batch in table.to_batches():
            yield conform(batch, schema)
        last = table.slice(table.num_rows - 1)
        position = Key(
            int(last.column(0)[0].as_py()),
            str(last.column(1)[0].as_py()),
            int(last.column(2).cast(pa.int64())[0].as_py()),
        )
        if remaining is not None:
            remaining -= table.num_rows
        if table.num_rows < chunk:
            return
