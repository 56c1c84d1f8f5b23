"""Run history of the sync jobs (`sync_runs`) and the advisory locks the jobs share."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from engine.errors import SyncFailed

# Held for the whole of a lake sync or a tiering run: both decide from lake_days what the
# warm store may drop or the lake may overwrite, so they never run together.
SYNC_LOCK = 0x53594E43  # "SYNC"
# Held by a scheduler while it runs the nightly job, so two schedulers never both run it.
NIGHTLY_LOCK = 0x4E49474854  # "NIGHT"

# Ingest and backfill never work on one participant's days at once. A backfill batch holds
# its participants' locks (exclusive, on its session) from before it marks its days tiered
# and "being loaded" until the lake holds them and they are recorded; an ingest takes its
# participants' locks (shared, until its transaction ends) before it looks at their days, so
# it never rehydrates a day from a lake that does not hold it yet: it waits for the batch.
# Participants share PARTICIPANT_BUCKETS locks (user_id mod the count): an ingest of any
# number of participants takes at most that many of PostgreSQL's lock slots, and two
# participants of one bucket merely wait for each other. The two-key form of the advisory
# locks is a key space of its own, apart from the one-key locks above. Both sides lock the
# buckets in ascending order (a sorted subquery), so two lockers never deadlock.
PARTICIPANT_LOCK = 0x50415254  # "PART", the first key; the bucket is the second
PARTICIPANT_BUCKETS = 256


def participant_locks_sql(function: str, users: str) -> str:
    """SQL taking `function` (an advisory lock function of two int keys) on the buckets of
    the participants of `users` (a FROM item with a user_id column), in ascending order."""
    return (
        f"SELECT count({function}({PARTICIPANT_LOCK}, bucket)) FROM ("  # noqa: S608 (constants)
        f"SELECT DISTINCT mod(user_id, {PARTICIPANT_BUCKETS}) AS bucket FROM {users} "
        "ORDER BY bucket) AS buckets"
    )


@contextmanager
def participants_locked(conn: psycopg.Connection, users: list[int]) -> Iterator[None]:
    """Hold the participants' locks exclusively on `conn` (an autocommit session): waits for
    ingests of them to commit, makes new ones wait until the block ends. Released when the
    block ends, or by the server when the process dies."""
    given = "unnest(%s::int[]) AS given(user_id)"
    conn.execute(participant_locks_sql("pg_advisory_lock", given), (users,))
    try:
        yield
    finally:
        conn.execute(participant_locks_sql("pg_advisory_unlock", given), (users,))


_HELD_BUCKETS = (
    "SELECT DISTINCT objid::int FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 "  # noqa: S608 (constants)
    f"AND classid = {PARTICIPANT_LOCK} AND mode = 'ExclusiveLock' AND granted "
    "AND pid <> pg_backend_pid()"
)


def held_participants(cur: Any, users: list[int]) -> list[int]:
    """Of `users`, those whose lock another session holds exclusively (a backfill batch)."""
    cur.execute(_HELD_BUCKETS)
    buckets = {int(row[0]) for row in cur.fetchall()}
    return [u for u in users if u % PARTICIPANT_BUCKETS in buckets]


@dataclass(frozen=True)
class JobResult:
    """What a job did, as recorded in sync_runs."""

    job: str
    status: str = "ok"  # ok | failed | skipped
    days: int = 0
    rows: int = 0
    bytes: int = 0
    files: int = 0
    seconds: float = 0.0
    lake_versions: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    detail: object = None  # the job's own result record (SyncResult, TieringResult, ...)


@dataclass(frozen=True)
class RunRecord:
    id: int
    job: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    days: int
    rows: int
    bytes: int
    files: int
    lake_versions: dict[str, int]
    error: str | None

    @property
    def seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@contextmanager
def advisory_lock(url: str, key: int, what: str) -> Iterator[psycopg.Connection]:
    """Hold a session advisory lock on a dedicated connection, or raise SyncFailed at once.

    The lock dies with the connection, so a process killed with SIGKILL never leaves it held.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not row or not row[0]:
            raise SyncFailed(f"another {what} is running; try again when it has finished")
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


# A run recorded as running whose connection is gone: its process died (a killed job's
# connection closes with it; a reused pid has a later backend_start).
_PROCESS_GONE = (
    "r.status = 'running' AND NOT EXISTS ("
    " SELECT 1 FROM pg_stat_activity a"
    " WHERE a.pid = r.backend_pid AND a.backend_start <= r.started_at)"
)


def start_run(conn: psycopg.Connection, job: str) -> int:
    """Record a running job; runs of it whose process died are marked 'interrupted' first."""
    conn.execute(
        "UPDATE sync_runs r SET status = 'interrupted', finished_at = now() "  # noqa: S608
        f"WHERE r.job = %s AND {_PROCESS_GONE}",
        (job,),
    )
    row = conn.execute(
        "INSERT INTO sync_runs (job, status, backend_pid) "
        "VALUES (%s, 'running', pg_backend_pid()) RETURNING id",
        (job,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def finish_run(conn: psycopg.Connection, run_id: int, result: JobResult) -> None:
    conn.execute(
        "UPDATE sync_runs SET status = %s, finished_at = now(), days = %s, rows = %s, "
        "bytes = %s, files = %s, lake_versions = %s, error = %s WHERE id = %s",
        (
            result.status,
            result.days,
            result.rows,
            result.bytes,
            result.files,
            json.dumps(result.lake_versions),
            result.error,
            run_id,
        ),
    )


def recent_runs(url: str, limit: int = 10, job: str | None = None) -> list[RunRecord]:
    """The latest runs, newest first (of one job if given). A run whose process died shows
    'interrupted' at once, not only once the next run of its job records it."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, job, "  # noqa: S608
            f"CASE WHEN {_PROCESS_GONE} THEN 'interrupted' ELSE status END, "
            "started_at, finished_at, days, rows, bytes, files, lake_versions, error "
            "FROM sync_runs r WHERE %(job)s::text IS NULL OR job = %(job)s "
            "ORDER BY started_at DESC, id DESC LIMIT %(limit)s",
            {"job": job, "limit": limit},
        ).fetchall()
    return [
        RunRecord(
            id=r[0],
            job=r[1],
            status=r[2],
            started_at=r[3],
            finished_at=r[4],
            days=r[5],
            rows=r[6],
            bytes=r[7],
            files=r[8],
            lake_versions=dict(r[9] or {}),
            error=r[10],
        )
        for r in rows
    ]


def last_success(url: str, job: str) -> datetime | None:
    """When the last successful run of `job` started, None if it never succeeded."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT max(started_at) FROM sync_runs WHERE job = %s AND status = 'ok'", (job,)
        ).fetchone()
    return row[0] if row else None
