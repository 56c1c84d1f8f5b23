"""Bulk ingest into raw_data: Arrow → COPY (ADBC) into a staging table → one upsert.

Each file is one transaction: it lands whole or not at all. Re-delivered rows replace the
stored value (the key is user_id, metric, ts). Every (user, UTC day) touched takes a fresh
change number in day_state, which is what the rollup refresh and the lake sync follow.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import SyncFailed, first_few
from lake import Lake
from sync import rehydrate, timescale
from sync.readers import CSV_BLOCK_BYTES, RAW_SCHEMA, read_validated
from sync.runs import held_participants, participant_locks_sql

_STAGING = "stratum_ingest_staging"
_RANGES = "stratum_ingest_ranges"
COPY_ROWS = 1 << 20
LOCK_WAIT_S = 600.0  # longest wait for a backfill batch (minutes: a batch on object storage)
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout
_SHOWN = 5  # participants named in a refusal

# Replacing stored rows needs an upsert, which costs PostgreSQL twice a plain COPY. Most
# deliveries are new data, so a batch whose (user, metric) time ranges hold no stored row is
# copied straight into raw_data; only overlapping batches go through staging + upsert.
_OVERLAPS = """
SELECT EXISTS (
    SELECT 1 FROM stratum_ingest_ranges AS g
    WHERE EXISTS (
        SELECT 1 FROM raw_data AS r
        WHERE r.user_id = g.user_id AND r.metric = g.metric AND r.ts BETWEEN g.lo AND g.hi
    )
)
"""

_UPSERT = """
INSERT INTO raw_data (ts, user_id, metric, value)
SELECT ts, user_id, metric, value FROM stratum_ingest_staging
ON CONFLICT (user_id, metric, ts) DO UPDATE SET value = EXCLUDED.value
"""

_MARK_DAYS = """
INSERT INTO day_state (user_id, day, change_seq, changed_at)
SELECT user_id, day, nextval('day_change_seq'), now() FROM stratum_ingest_days
ON CONFLICT (user_id, day) DO UPDATE
SET change_seq = EXCLUDED.change_seq, changed_at = EXCLUDED.changed_at
"""


@dataclass(frozen=True)
class IngestResult:
    files: int
    rows: int
    days_marked: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def ingest_files(
    url: str,
    paths: Iterable[Path],
    lake_root: str | Path | None = None,
    csv_block_bytes: int = CSV_BLOCK_BYTES,
    ts_unit: str | None = None,
    lock_wait_s: float = LOCK_WAIT_S,
) -> IngestResult:
    """Ingest each file in its own transaction; the first bad file raises IngestRejected.

    ``lake_root``: where tiered days are read back from (default: where tiering put them);
    ``csv_block_bytes``: CSV text read per batch (and the longest line allowed);
    ``ts_unit``: ``ts`` holds integer epochs in s, ms or us (else integers are refused);
    ``lock_wait_s``: how long to wait for a backfill batch of the same participants
    (then SyncFailed, and nothing of the file is loaded).
    """
    started = time.perf_counter()
    files = rows = days = 0
    for path in paths:
        batches = read_validated(Path(path), csv_block_bytes, ts_unit)
        loaded, marked = _load(url, batches, lake_root, lock_wait_s)
        files, rows, days = files + 1, rows + loaded, days + marked
    return IngestResult(files, rows, days, time.perf_counter() - started)


def ingest_tables(
    url: str,
    tables: Iterable[pa.Table],
    lake_root: str | Path | None = None,
    lock_wait_s: float = LOCK_WAIT_S,
) -> IngestResult:
    """Ingest already-validated Arrow tables (RAW_SCHEMA) in one transaction."""
    started = time.perf_counter()
    rows, days = _load(url, (t.cast(RAW_SCHEMA) for t in tables), lake_root, lock_wait_s)
    return IngestResult(1, rows, days, time.perf_counter() - started)


def _wait_for_backfills(cur: Any, users: list[int], lock_wait_s: float) -> None:
    """Take the participants' locks (shared): a backfill batch of them finishes first
    (sync/runs.py). A batch that does not finish within `lock_wait_s` (a hung lake write)
    refuses the ingest rather than holding it, and every row it wrote, indefinitely."""
    cur.execute(f"SET LOCAL lock_timeout = {max(1, round(lock_wait_s * 1000))}")
    try:
        cur.execute(participant_locks_sql("pg_advisory_xact_lock_shared", "stratum_ingest_days"))
        cur.fetchall()
    except adbc.Error as exc:  # (the lock statement fails at its fetch)
        if getattr(exc, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        cur.connection.rollback()
        raise SyncFailed(
            f"{_named(held_participants(cur, users))} being loaded by stratum backfill for over "
            f"{lock_wait_s:g} s; nothing was loaded: run the ingest again once the "
            "backfill has moved on"
        ) from None
    cur.execute("SET LOCAL lock_timeout TO DEFAULT")


def _named(users: list[int]) -> str:
    if not users:  # the batch ended just after the wait
        return "the file's participants were"
    if len(users) == 1:
        return f"participant {users[0]} is"
    return f"participants {first_few(users, shown=_SHOWN)} are"


def series_keys(table: pa.Table) -> tuple[np.ndarray, pa.Array]:
    """One int64 per row ordered like (user_id, metric), so numpy sorts and compares integers
    instead of pyarrow comparing strings: user * metrics + the metric's rank among the
    distinct names (byte order, as a string sort; below the names' count, so the packing
    keeps the order). Also the names, in rank order."""
    metric = pc.dictionary_encode(table.column("metric").combine_chunks())
    by_name = pc.sort_indices(metric.dictionary).to_numpy()
    rank = np.empty(len(by_name), dtype=np.int64)
    rank[by_name] = np.arange(len(by_name))
    users = table.column("user_id").to_numpy().astype(np.int64)
    series = users * len(by_name) + rank[metric.indices.to_numpy(zero_copy_only=False)]
    return series, metric.dictionary.take(pa.array(by_name))


def in_key_order(series: np.ndarray, ts: np.ndarray) -> bool:
    """Whether rows are sorted by (series, ts)."""
    d_series, d_ts = np.diff(series), np.diff(ts)
    return bool(np.all((d_series > 0) | ((d_series == 0) & (d_ts >= 0))))


def last_per_key(table: pa.Table) -> pa.Table:
    """Sort by the key and keep the last copy of each (user, metric, ts), as a re-delivery would."""
    if table.num_rows < 2:
        return table
    table = table.combine_chunks()
    series, _ = series_keys(table)
    ts = table["ts"].cast(pa.int64()).to_numpy()
    if not in_key_order(series, ts):
        order = np.lexsort((ts, series))  # stable: later rows stay later
        table = table.take(pa.array(order))
        series, ts = series[order], ts[order]
    same_as_next = (np.diff(series) == 0) & (np.diff(ts) == 0)
    if not same_as_next.any():
        return table
    # The sort is stable: of each run of copies, the last one is the latest delivered.
    return table.filter(pa.array(np.append(~same_as_next, True)))


def _rebatched(tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """Merge small tables into ~COPY_ROWS-row ones: each batch costs a few round trips."""
    pending: list[pa.Table] = []
    rows = 0
    for table in tables:
        pending.append(table)
        rows += table.num_rows
        if rows >= COPY_ROWS:
            yield pa.concat_tables(pending)
            pending, rows = [], 0
    if rows:
        yield pa.concat_tables(pending)


def _ranges(table: pa.Table) -> pa.Table:
    grouped = table.group_by(["user_id", "metric"]).aggregate([("ts", "min"), ("ts", "max")])
    return grouped.rename_columns(["user_id", "metric", "lo", "hi"])


def _days(table: pa.Table) -> pa.Table:
    day = pc.cast(table["ts"], pa.date32())  # UTC: the column's zone
    return (
        pa.table({"user_id": table["user_id"], "day": day})
        .group_by(["user_id", "day"])
        .aggregate([])
    )


def _load(
    url: str, tables: Iterable[pa.Table], lake_root: str | Path | None, lock_wait_s: float
) -> tuple[int, int]:
    """Write every batch and mark the touched days, all in one transaction."""
    rows = 0
    days: list[pa.Table] = []
    with adbc.connect(url) as conn, conn.cursor() as cur:
        cur.execute(timescale.ALLOW_COLUMNSTORE_WRITES)
        for table in _rebatched(tables):
            batch = last_per_key(table)
            cur.adbc_ingest(_RANGES, _ranges(batch), mode="replace", temporary=True)
            cur.execute(_OVERLAPS)
            overlaps = cur.fetchone()[0]
            if overlaps:
                cur.adbc_ingest(_STAGING, batch, mode="replace", temporary=True)
                cur.execute(_UPSERT)
            else:
                cur.adbc_ingest("raw_data", batch, mode="append")
            rows += batch.num_rows
            days.append(_days(batch))
        if not rows:
            conn.rollback()
            return 0, 0
        touched = pa.concat_tables(days).group_by(["user_id", "day"]).aggregate([])
        cur.adbc_ingest("stratum_ingest_days", touched, mode="replace", temporary=True)
        users = pc.unique(touched["user_id"]).to_pylist()
        _wait_for_backfills(cur, sorted(users), lock_wait_s)
        # Days tiered to the lake are copied back; the rows just written win over the lake's.
        tiered = rehydrate.lock_tiered_days(cur, "stratum_ingest_days")
        if tiered:
            rehydrate.rehydrate(cur, Lake(rehydrate.lake_root(cur, lake_root)), tiered)
        cur.execute(_MARK_DAYS)
        conn.commit()
        return rows, touched.num_rows
