"""Warm chunks past their grace period move to TimescaleDB's columnstore (compression).

A raw row takes ~120 bytes in a row-store chunk with its indexes and ~2 in the columnstore,
so compressing every chunk older than a few days keeps the warm store small while it holds
its weeks of recent data. Compressed chunks stay writable: late rows, rollup refreshes and
rehydration land in them (sync/timescale.py lifts the decompression cap for those writes),
and the next run recompresses the chunks they left partial. On plain PostgreSQL this is a
no-op. stratum runs it itself (the nightly job, `stratum db compress`) rather than through a
TimescaleDB policy, so that it is recorded and reported with the other jobs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import psycopg

from sync import timescale


@dataclass(frozen=True)
class ColumnstoreResult:
    chunks: int  # chunks compressed or recompressed
    bytes_before: int  # of the hypertables, with indexes
    bytes_after: int
    seconds: float


def compress_warm_store(url: str, older_than: datetime) -> ColumnstoreResult:
    """Compress every chunk of raw_data and data_1m_stored that ends before `older_than`."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:  # one transaction per chunk
        if not timescale.enabled(conn):
            return ColumnstoreResult(0, 0, 0, time.perf_counter() - started)
        before = _bytes(conn)
        chunks = 0
        for table in timescale.HYPERTABLES:
            for chunk in timescale.uncompressed_chunks(conn, table, older_than):
                try:
                    timescale.compress_chunk(conn, chunk)
                except psycopg.errors.UndefinedTable:
                    continue  # tiering dropped it meanwhile
                chunks += 1
        return ColumnstoreResult(chunks, before, _bytes(conn), time.perf_counter() - started)


def _bytes(conn: psycopg.Connection) -> int:
    return sum(timescale.table_bytes(conn, table) for table in timescale.HYPERTABLES)
