"""The access log: one row per request made with a key (or refused for want of one).

Written by the API when the request ends, however it ends (answered, refused, failed, or
cut off by the client); read by `stratum audit` (sync/access.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg


@dataclass
class AuditEntry:
    key_name: str  # "-": no valid key was presented
    method: str
    path: str
    client: str | None
    users: tuple[int, ...] | None = None
    metrics: tuple[str, ...] | None = None
    span_start: datetime | None = None
    span_end: datetime | None = None
    resolution: str | None = None
    format: str | None = None
    rows: int | None = None
    bytes: int = 0
    status: int = 500
    duration_ms: float = 0.0


_INSERT = (
    "INSERT INTO access_audit (key_name, method, path, users, metrics, span_start, span_end, "
    "resolution, format, rows, bytes, status, duration_ms, client) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def write_entry(conn: psycopg.Connection, entry: AuditEntry) -> None:
    conn.execute(
        _INSERT,
        (
            entry.key_name,
            entry.method,
            entry.path,
            None if entry.users is None else list(entry.users),
            None if entry.metrics is None else list(entry.metrics),
            entry.span_start,
            entry.span_end,
            entry.resolution,
            entry.format,
            entry.rows,
            entry.bytes,
            entry.status,
            entry.duration_ms,
            entry.client,
        ),
    )
