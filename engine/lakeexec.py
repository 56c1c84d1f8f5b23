"""Lake executor: DuckDB over the exact file list of a pinned Delta version.

No directory globbing: the planner hands over the files. Filters on metric and ts push down
to Parquet row groups (files are sorted by metric, ts). A user's files hold disjoint day
ranges (a day, a run of days, a compacted month), each sorted by (metric, ts); listed in
(user_id, first day) order, a one-metric scan is already in answer order, so DuckDB
(preserve_insertion_order) streams it without a sort.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from engine.m4 import M4, duckdb_sql
from engine.plan import Segment
from engine.query import Key, from_us, to_us
from engine.settings import MemorySettings
from engine.shapes import TS, conform, fixed_columns, schema_for, select_list, with_constants
from engine.timestamps import midnight
from lake import LakeFile, LakeFiles, LakeStorage, in_utc, lake_scan, read_measures

log = logging.getLogger(__name__)
# _materialized reads a DB-API result as Arrow on purpose: DuckDB's note that this copies the
# rows would be printed once per process (pytest's own filters are in pyproject.toml).
warnings.filterwarnings("ignore", "Arrow output on a DB-API result", UserWarning, __name__)

BATCH_ROWS = 131_072


def _private_submit() -> Callable[..., Any] | None:
    """DuckDB 2's function under its relation API that runs a statement (_stream_reader)."""
    try:
        from duckdb import _seam
    except ImportError:
        return None
    return getattr(_seam, "submit", None)


_submit = _private_submit()


@dataclass(frozen=True)
class ScanTuning:
    """Where the executor switches strategy. Tests lower these to take the large-answer
    path on small data; the answers are the same either way."""

    # Answers up to this many rows (by file statistics) are sorted in one query; larger ones
    # are read series by series in file order, which needs no sort.
    sort_rows: int = 1_000_000
    first_chunk_files: int = 16  # a page's first run of files per series; doubles after
    # What one more DuckDB query costs, in rows a sorted query reads instead (~1-2 ms). A
    # page of several metrics is sorted in one query only while that costs less than the
    # series-by-series queries it needs: the sort reads every row of the files (a deep page's
    # whole participant), the series queries only the files from where the page starts.
    query_rows: int = 65_536
    # Answers whose files hold at most this many rows (by their statistics), in at most
    # `small_files` files, are read with pyarrow, not DuckDB: a DuckDB query costs ~2.5 ms
    # to bind and submit before it reads a row, more than reading a small file (one
    # participant-day of raw rows, 6,581 in one file: the engine's answer 2.0 ms this way,
    # 4.0 through DuckDB). pyarrow reads files one after another and whole, DuckDB in
    # parallel and only the row groups asked: at 7-10 files the two were even.
    small_rows: int = 32_768
    small_files: int = 4
    # Answers whose files hold at most this many rows in the days asked run to the end in
    # DuckDB before their first batch (cursor.execute), not as a lazy relation: DuckDB 2's
    # relation binds its statement twice (once to describe it, once to run it), and binding
    # read_parquet opens the files' footers. 0.55-0.8 ms less per query on `medium` (1
    # participant x 1 week raw: 1.91 against 2.57 ms; 10 participants x 1 day of 1m: 6.37
    # against 7.19), while a participant-year (477k rows) took the same either way. The rows
    # come as one batch per BATCH_ROWS, not one per file read.
    materialize_rows: int = 262_144


DEFAULT_TUNING = ScanTuning()


def connect_duckdb(memory: MemorySettings, limit_bytes: int) -> duckdb.DuckDBPyConnection:
    """One in-process DuckDB for all queries: its memory_limit is shared by all of them."""
    Path(memory.spill_path).mkdir(parents=True, exist_ok=True)
    duck = in_utc(
        duckdb.connect(
            config={
                "memory_limit": _megabytes(limit_bytes),
                "temp_directory": str(memory.spill_path),
                "threads": memory.duckdb_threads,
                # DuckDB 2 starts 8 async I/O threads by default, each woken ~3 times a
                # request; over page-cached files they only compete with the workers (one
                # participant-year as Arrow over HTTP: 0.4-1.8 ms sooner without, 2 cores).
                "async_threads": memory.duckdb_async_threads,
                "preserve_insertion_order": True,
            }
        )
    )
    # Footers read once, not per query: lake files are never rewritten in place, and DuckDB
    # reads a footer again when its file's modification time changed. A participant-year
    # raw (13 files) took 12.0 ms against 14.2 in process; the cache is an LRU bounded by
    # DuckDB. Set once the parquet extension is loaded (not settable in `config`).
    duck.execute("SET GLOBAL parquet_metadata_cache = true")
    return duck


def _megabytes(limit_bytes: int) -> str:
    return f"{max(32, limit_bytes // 2**20)}MiB"


def set_memory_limit(duck: duckdb.DuckDBPyConnection, limit_bytes: int) -> None:
    duck.execute(f"SET memory_limit = '{_megabytes(limit_bytes)}'")


def _query(
    duck: duckdb.DuckDBPyConnection,
    storage: LakeStorage,
    segment: Segment,
    files: tuple[LakeFile, ...],
    users: tuple[int, ...],
    metrics: tuple[str, ...],
    after: Key | None,
    limit: int | None,
    m4: M4 | None = None,
    materialize: bool = False,
) -> Iterator[pa.RecordBatch]:
    """One DuckDB query over `files`; sorted only when several metrics interleave in a file
    (or M4 reduced them). `materialize`: run it to the end first (ScanTuning.materialize_rows)."""
    cursor = duck.cursor()  # per-query connection sharing the database and its memory limit
    try:
        lake_files = LakeFiles(segment.source, segment.lake_version, files)
        with lake_scan(cursor, lake_files, storage) as (scan, file_params):
            constants = {} if m4 is not None else fixed_columns(users, metrics)
            sql, params = _statement(
                segment, scan, file_params, users, metrics, constants, after, limit, m4, files
            )
            schema = schema_for(segment.resolution)
            log.debug("DuckDB query %s", "run to the end" if materialize else "streamed")
            batches = _materialized if materialize else _streamed
            for batch in batches(cursor, sql, params):
                if batch.num_rows:
                    yield with_constants(batch, schema, constants)
    finally:
        cursor.close()


def _statement(
    segment: Segment,
    scan: str,
    file_params: dict[str, list[str]],
    users: tuple[int, ...],
    metrics: tuple[str, ...],
    constants: dict[str, int | str],
    after: Key | None,
    limit: int | None,
    m4: M4 | None,
    files: tuple[LakeFile, ...],
) -> tuple[str, dict[str, object]]:
    """The query's text and parameters (user text only ever as parameters)."""
    params: dict[str, object] = dict(file_params)
    params.update({f"u{i}": u for i, u in enumerate(users)})
    params.update({f"m{i}": m for i, m in enumerate(metrics)})
    user_list = ", ".join(f"$u{i}" for i in range(len(users)))
    metric_list = ", ".join(f"$m{i}" for i in range(len(metrics)))
    where = f"user_id IN ({user_list}) AND metric IN ({metric_list})"
    if not within_span(segment, files):
        params.update({"start": segment.start, "end": segment.end})
        where += " AND ts >= $start AND ts < $end"
    after_sql = "true"
    if after is not None and users == (after.user_id,) and metrics == (after.metric,):
        # `after`'s own series: its key reduces to the time, which DuckDB tests in the scan
        # (the whole key is a filter after it: page 1,000 of 10 participants' year, 3.0
        # against 2.3 ms for its statement).
        after_sql = "ts > $at"
        params["at"] = from_us(after.ts_us)
    elif after is not None:
        after_sql = (
            "(user_id > $au OR (user_id = $au AND (metric > $am OR (metric = $am AND ts > $at))))"
        )
        params.update({"au": after.user_id, "am": after.metric, "at": from_us(after.ts_us)})
    limit_sql = "" if limit is None else f" LIMIT {int(limit)}"
    columns = select_list(segment.resolution, constants)
    if m4 is not None:
        params.update({"m4_start": m4.start_us, "m4_column": m4.column_us})
        rows_sql = f"SELECT {columns} FROM {scan} AS lake WHERE {where}"  # noqa: S608
        sql = duckdb_sql(rows_sql, after_sql, f"ORDER BY user_id, metric, ts{limit_sql}")
    else:
        # One metric: file order (user, day) is answer order. Several interleave inside a file.
        order = "" if len(metrics) == 1 else " ORDER BY user_id, metric, ts"
        sql = (
            f"SELECT {columns} FROM {scan} AS lake "  # noqa: S608
            f"WHERE {where} AND {after_sql}{order}{limit_sql}"
        )
    return sql, params


def within_span(segment: Segment, files: tuple[LakeFile, ...]) -> bool:
    """Whether every row of `files` lies in the segment's span: a file's rows lie in its days
    (UTC; the writer dates each row by its ts), so when its days do, DuckDB need not test
    each row's ts. It tests them even where a row group's statistics show every row passes:
    a participant-year raw (13 whole months) took 9.5 ms and 15.8 ms of CPU with the test,
    8.3 and 13.9 without."""
    first = segment.start.date()  # the first day wholly in the span...
    if segment.start > midnight(first):
        first += timedelta(days=1)
    last = segment.end.date() - timedelta(days=1)  # ...and the last (the end is exclusive)
    return all(first <= f.first_day and f.last_day <= last for f in files)


def _streamed(
    cursor: duckdb.DuckDBPyConnection, sql: str, params: dict[str, object]
) -> Iterator[pa.RecordBatch]:
    """The rows as DuckDB reads them: a stream, memory bounded."""
    reader = _stream_reader(cursor, sql, params)
    try:
        yield from reader
    finally:
        reader.close()  # a page stops early: the scan's dataset can then be dropped


def _stream_reader(
    cursor: duckdb.DuckDBPyConnection, sql: str, params: dict[str, object]
) -> pa.RecordBatchReader:
    """DuckDB's stream of the statement's rows, the statement bound once where DuckDB lets
    us: its public way there, a lazy relation, binds the statement to describe it and again
    to run it, and binding read_parquet opens the files. DuckDB 2's relations submit
    through its private `_seam.submit`; used directly, a participant-year (13 files) starts
    1.5-1.8 ms sooner (16.3 against 18.1 ms to its last batch, in process). Where that
    function is missing or takes other arguments (another DuckDB release), the stream comes
    from a relation, for the rest of the process."""
    global _submit
    if _submit is not None:
        try:
            return _submit(cursor, sql, params, "stream", BATCH_ROWS).arrow_reader()
        except (TypeError, AttributeError):  # not the API this was written for: SQL and
            # its values fail as duckdb.Error, which the relation would raise alike
            log.warning("DuckDB's _seam.submit is not as expected: streaming via relations")
            _submit = None
    return cursor.sql(sql, params=params).to_arrow_reader(BATCH_ROWS)


def _materialized(
    cursor: duckdb.DuckDBPyConnection, sql: str, params: dict[str, object]
) -> Iterator[pa.RecordBatch]:
    """The rows of a small answer, run to the end in one statement (bound once)."""
    cursor.execute(sql, params)
    # DuckDB warns that a DB-API result's Arrow is a copy of its rows: of a small answer,
    # which costs less than binding the statement a second time (see materialize_rows).
    table = cursor.to_arrow_table()
    if table is not None:  # (None only once a result was read; this one is fresh)
        yield from table.combine_chunks().to_batches(BATCH_ROWS)


def _rows_in_days(segment: Segment, files: tuple[LakeFile, ...]) -> float | None:
    """The files' rows in the days asked, every metric's (a file's rows taken as spread
    evenly over its days: a day of a participant-month file is a thirtieth of it); None when
    a file's count is unknown."""
    if any(f.rows < 0 for f in files):
        return None
    first, last = segment.start.date(), (segment.end - timedelta(microseconds=1)).date()
    rows = 0.0
    for f in files:
        overlap = (min(last, f.last_day) - max(first, f.first_day)).days + 1
        rows += f.rows * max(overlap, 0) / ((f.last_day - f.first_day).days + 1)
    return rows


def _small(segment: Segment, files: tuple[LakeFile, ...], tuning: ScanTuning) -> bool:
    """Few files, and few rows in the days asked."""
    if len(files) > tuning.small_files:
        return False
    rows = _rows_in_days(segment, files)
    return rows is not None and rows <= tuning.small_rows


def _materializes(
    segment: Segment, files: tuple[LakeFile, ...], limit: int | None, tuning: ScanTuning
) -> bool:
    """Whether a query over `files` answers few enough rows to run to the end before its
    first batch: by the files' rows in the days asked, or its LIMIT."""
    rows = _rows_in_days(segment, files)
    if limit is not None:
        rows = limit if rows is None else min(rows, limit)
    return rows is not None and rows <= tuning.materialize_rows


def _read_small(
    storage: LakeStorage,
    segment: Segment,
    files: tuple[LakeFile, ...],
    metrics: tuple[str, ...],
    after: Key | None,
    limit: int | None,
) -> Iterator[pa.RecordBatch]:
    """The rows DuckDB's one query would give, read file by file with pyarrow: files come in
    (user, day) order and hold rows sorted by (metric, ts), so one metric needs no sort.
    (No file of a user before `after`'s is passed: stream_lake dropped them.)"""
    start, end = pa.scalar(segment.start, TS), pa.scalar(segment.end, TS)
    asked = pa.array(metrics, pa.string())
    parts = []
    for lake_file in files:
        table = read_measures(
            storage,
            segment.source,
            lake_file.path,
            (min(metrics), max(metrics)),
            (to_us(segment.start), to_us(segment.end)),
        )
        keep = pc.and_(
            pc.is_in(table["metric"], value_set=asked),
            pc.and_(pc.greater_equal(table["ts"], start), pc.less(table["ts"], end)),
        )
        if after is not None and lake_file.user_id == after.user_id:
            later = pc.or_(
                pc.greater(table["metric"], after.metric),
                pc.and_(
                    pc.equal(table["metric"], after.metric),
                    pc.greater(table["ts"], pa.scalar(from_us(after.ts_us), TS)),
                ),
            )
            keep = pc.and_(keep, later)
        table = table.filter(keep)
        user = pa.repeat(pa.scalar(lake_file.user_id, pa.int32()), table.num_rows)
        parts.append(table.add_column(0, "user_id", user))
    if not parts:
        return
    rows = pa.concat_tables(parts)
    if len(metrics) > 1:
        rows = rows.sort_by([(name, "ascending") for name in ("user_id", "metric", "ts")])
    if limit is not None:
        rows = rows.slice(0, limit)
    if segment.resolution != "raw":  # DuckDB's `sum / count AS avg`
        avg = pc.divide(rows["sum"], pc.cast(rows["count"], pa.float64()))
        rows = rows.append_column("avg", avg)
    schema = schema_for(segment.resolution)
    for batch in rows.select(schema.names).to_batches(BATCH_ROWS):
        if batch.num_rows:
            yield conform(batch, schema)


def _chunks(
    files: tuple[LakeFile, ...], limited: bool, first: int
) -> Iterator[tuple[LakeFile, ...]]:
    """All files at once, or (for a page) growing runs of them: 16, 32, 64... files, so a
    page near the start of a long series opens a few files, not a year of them."""
    if not limited:
        yield files
        return
    start, size = 0, first
    while start < len(files):
        yield files[start : start + size]
        start, size = start + size, size * 2


def _resumed(
    files: tuple[LakeFile, ...], metrics: tuple[str, ...], after: Key
) -> tuple[LakeFile, ...]:
    """Of `after`'s own user, no file before its day once no later metric remains to read
    (a deep page of one metric would otherwise scan the series' earlier days to drop them)."""
    if any(m > after.metric for m in metrics):
        return files
    return tuple(f for f in files if f.user_id > after.user_id or _ends_after(f, after))


def _ends_after(lake_file: LakeFile, after: Key) -> bool:
    """Whether the file's days reach past `after`'s instant (a page located at a day starts
    after the last microsecond of the day before: that day's file holds nothing later)."""
    return after.ts_us < to_us(midnight(lake_file.last_day + timedelta(days=1))) - 1


def _one_query(
    files: tuple[LakeFile, ...], metrics: tuple[str, ...], limit: int | None, tuning: ScanTuning
) -> bool:
    """Whether to read `files` in one query rather than series by series."""
    rows = sum(max(f.rows, 0) for f in files)
    if limit is None:  # the whole answer: one metric is already in file order
        return len(metrics) == 1 or rows <= tuning.sort_rows
    if rows > tuning.sort_rows:
        return False
    if len(metrics) == 1:
        return True  # no sort: the scan streams in file order and stops at the limit
    # A page of several metrics: one sort of every row, or a query per series it spans.
    series = len({f.user_id for f in files}) * len(metrics)
    series_queries = 1 + limit * series / max(rows, 1)
    return rows <= series_queries * tuning.query_rows


def stream_lake(
    duck: duckdb.DuckDBPyConnection,
    storage: LakeStorage,
    segment: Segment,
    metrics: tuple[str, ...],
    after: Key | None,
    limit: int | None,
    tuning: ScanTuning = DEFAULT_TUNING,
    m4: M4 | None = None,
) -> Iterator[pa.RecordBatch]:
    """Rows of `segment` after `after`, in (user_id, metric, ts) order, at most `limit`;
    with `m4`, only each pixel column's first, last, lowest and highest row per series."""
    files = segment.files
    if after is not None:  # earlier users' files cannot hold a later key
        files = tuple(f for f in files if f.user_id >= after.user_id)
    if not files:
        return
    files = tuple(sorted(files, key=lambda f: (f.user_id, f.first_day)))
    if m4 is not None:
        # One aggregate over every file: its answer is at most 4 rows per column and series.
        # (Every file of the user: a cursor filters the reduced rows, not the rows reduced.)
        log.debug("lake M4 over %d files, %d columns", len(files), m4.width)
        most = 4 * m4.width * len(segment.users) * len(metrics)
        materialize = most <= tuning.materialize_rows
        yield from _query(
            duck, storage, segment, files, segment.users, metrics, after, limit, m4, materialize
        )
        return
    if after is not None:
        files = _resumed(files, metrics, after)
        if not files:
            return
    if _small(segment, files, tuning):
        log.debug("lake read of %d small files with pyarrow", len(files))
        yield from _read_small(storage, segment, files, metrics, after, limit)
        return
    if _one_query(files, metrics, limit, tuning):
        # One order-preserving scan, or one sort of a small answer: a single query.
        log.debug("lake scan of %d files in one query", len(files))
        materialize = _materializes(segment, files, limit, tuning)
        yield from _query(
            duck, storage, segment, files, segment.users, metrics, after, limit, None, materialize
        )
        return
    # Large: one order-preserving scan per series (user, metric) - no sort, bounded memory.
    log.debug("lake scan of %d files series by series", len(files))
    remaining = limit
    for user_id in sorted({f.user_id for f in files}):
        user_files = tuple(f for f in files if f.user_id == user_id)
        for metric in metrics:
            series_after = None
            if after is not None and (user_id, metric) <= (after.user_id, after.metric):
                if (user_id, metric) < (after.user_id, after.metric):
                    continue
                series_after = after
            series_files = user_files
            if series_after is not None:
                series_files = tuple(f for f in user_files if _ends_after(f, series_after))
            for chunk in _chunks(series_files, limit is not None, tuning.first_chunk_files):
                batches = _query(
                    duck,
                    storage,
                    segment,
                    files=chunk,
                    users=(user_id,),
                    metrics=(metric,),
                    after=series_after,
                    limit=remaining,
                    materialize=_materializes(segment, chunk, remaining, tuning),
                )
                for batch in batches:
                    yield batch
                    if remaining is not None:
                        remaining -= batch.num_rows
                        if remaining <= 0:
                            return
