"""Export completed, changed days from the warm store to the lake (`stratum sync`).

A (user, day) is exported once it is complete (older than the grace period), changed since
its last sync (change_seq > synced_seq), rolled up (refreshed_seq = change_seq) and still in
the warm store (not tiered). Days go in batches; per batch:

1. one REPEATABLE READ snapshot reads the batch's day_state change numbers and every tier's
   rows, as Arrow (ADBC, one array per (user, metric, window) so PostgreSQL ships a few
   hundred rows instead of millions);
2. each tier gets one Delta commit replacing exactly the batch's days (agg_1h/agg_1d: the
   users' whole months/years, rebuilt from the warm store, which keeps them forever);
3. the commit is read back and compared, per (user, day), with the source rows (count and
   checksum); only then are lake_days and synced_seq written, with the change number read in
   the snapshot. A write landing meanwhile has a newer number, so its day stays pending and
   the router keeps reading it from the warm store.

A mismatch writes nothing for that (user, day, tier) - any older lake_days row for it is
deleted, as its rows were just replaced; so is the row of any other day of a file the commit
rewrote (a month, a year, a compacted raw month) that no longer reads back as recorded - and
the run raises VerificationFailed once the other batches are done. The next batch is read
while the current one is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import SyncFailed, first_few
from engine.tiers import LAKE_TABLES, by_lake_table, minute_rows
from engine.timestamps import midnight
from lake import Lake, LakeFile, day_checksums, partition_of
from lake.integrity import file_digest
from lake.layout import (
    PartitionKey,
    data_schema,
    partition_days,
    replaced_span,
    replaces_days,
    value_columns,
)
from sync.lakefiles import record_files, require_current_log
from sync.prefetch import prefetched
from sync.runs import SYNC_LOCK, advisory_lock

log = logging.getLogger(__name__)

Pair = tuple[int, date]
Stat = tuple[int, int]

_MICROS_PER_DAY = 86_400_000_000
_TS = pa.timestamp("us", tz="UTC")

# Days to export, oldest first within each user. Tiered days are never exported: the warm
# store no longer holds their raw rows, and the lake must not be overwritten with less.
_PENDING = """
SELECT user_id, day FROM day_state
WHERE day < %s AND change_seq > synced_seq AND refreshed_seq = change_seq
  AND tiered_seq IS NULL
ORDER BY user_id, day
"""
_STALE = """
SELECT count(*) FROM day_state
WHERE day < %s AND change_seq > synced_seq AND refreshed_seq <> change_seq
"""
# The same conditions again, inside the batch's snapshot: a write or a refresh since the
# candidate list was made is seen here together with the rows.
_KEPT = """
SELECT e.user_id, e.day, d.change_seq
FROM stratum_export_days e JOIN day_state d USING (user_id, day)
WHERE d.change_seq > d.synced_seq AND d.refreshed_seq = d.change_seq AND d.tiered_seq IS NULL
ORDER BY e.user_id, e.day
"""


class VerificationFailed(SyncFailed):
    """Some exported days did not read back equal to their source; they stay unsynced."""

    def __init__(self, message: str, result: SyncResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class SyncResult:
    days: int  # (user, day) pairs exported and verified in every tier
    failed: list[tuple[int, date, str]]  # (user, day, tier) whose read-back did not match
    skipped_stale: int  # pending days left for later: their rollups are not fresh
    rows: dict[str, int]  # per tier: rows of the partitions written, each counted once
    bytes: int  # bytes of the files written
    files: int
    versions: dict[str, int]  # lake version per tier after the run's last commit
    seconds: float

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def rows_per_s(self) -> float:
        return self.total_rows / self.seconds if self.seconds else 0.0


@dataclass
class Snapshot:
    """One batch read from the warm store in one snapshot."""

    change_seq: dict[Pair, int]
    tables: dict[str, pa.Table]  # data_schema columns, metric dictionary-encoded

    @property
    def pairs(self) -> list[Pair]:
        return sorted(self.change_seq)


@dataclass
class Tally:
    days: int = 0
    # (rows, bytes, files) of each (tier, partition) as this run last wrote it. A coarse
    # partition (agg_1h: user-month, agg_1d: user-year) is rewritten whole by every batch
    # holding one of its days: counted once, as it stands in the lake, not once per batch.
    written: dict[tuple[str, PartitionKey], tuple[int, int, int]] = field(default_factory=dict)
    # The fine tiers replace days, each once per run: [rows, bytes, files] summed per tier.
    fine: dict[str, list[int]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[int, date, str]] = field(default_factory=list)

    @property
    def rows(self) -> dict[str, int]:
        per_tier = dict.fromkeys(LAKE_TABLES, 0)
        for (tier, _), (rows, _, _) in self.written.items():
            per_tier[tier] += rows
        for tier, (rows, _, _) in self.fine.items():
            per_tier[tier] += rows
        return per_tier

    @property
    def bytes(self) -> int:
        coarse = sum(size for _, size, _ in self.written.values())
        return coarse + sum(size for _, size, _ in self.fine.values())

    @property
    def files(self) -> int:
        coarse = sum(files for _, _, files in self.written.values())
        return coarse + sum(files for _, _, files in self.fine.values())


Progress = Callable[[int, int, int], None]  # (days done, days total, rows exported)


def sync_cutoff(today: date, grace_days: int) -> date:
    """Days before this one are complete enough to export."""
    return today - timedelta(days=grace_days)


def pending_days(conn: psycopg.Connection, cutoff: date) -> list[Pair]:
    return [(int(u), d) for u, d in conn.execute(_PENDING, (cutoff,)).fetchall()]


def sync_to_lake(
    url: str,
    lake: Lake,
    *,
    grace_days: int,
    batch_days: int,
    today: date | None = None,
    progress: Progress | None = None,
) -> SyncResult:
    """Export every pending completed day; raise SyncFailed if another sync or tiering runs,
    VerificationFailed (after finishing the rest) if some day did not read back equal."""
    started = time.perf_counter()
    cutoff = sync_cutoff(today or datetime.now(UTC).date(), grace_days)
    tally = Tally()
    with (
        advisory_lock(url, SYNC_LOCK, "sync or tiering run"),
        psycopg.connect(url, autocommit=True) as conn,
    ):
        require_current_log(conn, lake)
        candidates = pending_days(conn, cutoff)
        stale_row = conn.execute(_STALE, (cutoff,)).fetchone()
        stale = int(stale_row[0]) if stale_row else 0
        metrics = [r[0] for r in conn.execute("SELECT name FROM metrics ORDER BY name")]
        log.info(
            "sync: %d days pending before %s (%d wait for rollups)", len(candidates), cutoff, stale
        )
        batches = [candidates[i : i + batch_days] for i in range(len(candidates))[::batch_days]]
        done = 0
        if progress:
            progress(0, len(candidates), 0)
        with adbc.connect(url, autocommit=True) as reader, reader.cursor() as cur:

            def read(batch: list[Pair]) -> Snapshot:
                return _read_snapshot(cur, batch, metrics, cutoff)

            reads = (read(batch) for batch in batches)
            with closing(prefetched(reads, name="sync-reader")) as snapshots:
                for batch, snapshot in zip(batches, snapshots, strict=True):
                    if snapshot.change_seq:
                        export_batch(conn, lake, snapshot, tally)
                    done += len(batch)
                    if progress:
                        progress(done, len(candidates), sum(tally.rows.values()))
    for tier in LAKE_TABLES:
        version = lake.version(tier)
        if version is not None:
            tally.versions.setdefault(tier, version)
    result = SyncResult(
        days=tally.days,
        failed=tally.failed,
        skipped_stale=stale,
        rows=tally.rows,
        bytes=tally.bytes,
        files=tally.files,
        versions=tally.versions,
        seconds=time.perf_counter() - started,
    )
    if tally.failed:
        shown = first_few(tally.failed, lambda f: f"user {f[0]} {f[1]} {f[2]}")
        raise VerificationFailed(
            f"lake read-back differs from the warm store for {shown}; those days stay "
            "served from the warm store and pending",
            result,
        )
    return result


# -- reading one batch ---------------------------------------------------------------------


def _windows(kept: Sequence[Pair], metrics: Sequence[str], cutoff: date) -> pa.Table:
    """Time windows to read per tier: each kept day for raw/agg_1m; each touched month/year
    (up to the cutoff) for agg_1h/agg_1d. One window per metric, so every lookup is a tight
    range of the (user_id, metric, ts) primary key."""
    rows: list[tuple[str, int, datetime, datetime]] = []
    for tier in LAKE_TABLES:
        spans: set[tuple[int, date, date]] = set()
        for user_id, day in kept:
            first, last = replaced_span(tier, user_id, day)
            spans.add((user_id, first, min(last + timedelta(days=1), cutoff)))
        for user_id, lo, hi in sorted(spans):
            rows.append((tier, user_id, midnight(lo), midnight(hi)))
    tiers, users, los, his = (list(c) for c in zip(*rows, strict=True)) if rows else ([],) * 4
    n = len(metrics)
    each = pa.array(np.repeat(np.arange(len(rows)), n))  # every window once per metric
    return pa.table(
        {
            "idx": pa.array(np.arange(len(rows) * n, dtype=np.int32)),
            "tier": pa.array(tiers, pa.string()).take(each),
            "user_id": pa.array(users, pa.int32()).take(each),
            "metric": pa.array(list(metrics) * len(rows), pa.string()),
            "lo": pa.array(los, _TS).take(each),
            "hi": pa.array(his, _TS).take(each),
        }
    )


def _tier_sql(tier: str) -> str:
    columns = ["ts", *value_columns(tier)]
    aggregates = ", ".join(f'array_agg(s."{c}") AS "{c}"' for c in columns)
    selected = ", ".join(f'a."{c}"' for c in columns)
    warm = by_lake_table(tier)
    if warm.stored_in:  # 1m: stored buckets, or a per-minute day's raw rows (never both)
        rows = minute_rows(
            lambda p: f"{p}user_id = w.user_id AND {p}metric = w.metric", "w.lo", "w.hi"
        )
    else:
        rows = (
            f"(SELECT * FROM {warm.warm_table} s WHERE s.user_id = w.user_id "  # noqa: S608
            "AND s.metric = w.metric AND s.ts >= w.lo AND s.ts < w.hi)"
        )
    # array_agg keeps the index order (metric, ts); every column sees the rows in one order.
    return (
        f"SELECT w.idx, {selected} FROM stratum_export_windows w "  # noqa: S608 (constants)
        f"CROSS JOIN LATERAL (SELECT {aggregates} FROM {rows} s) a "
        f"WHERE w.tier = '{tier}' AND a.ts IS NOT NULL"
    )


def _read_snapshot(
    cur: adbc.Cursor, batch: list[Pair], metrics: Sequence[str], cutoff: date
) -> Snapshot:
    days = pa.table(
        {
            "user_id": pa.array([u for u, _ in batch], pa.int32()),
            "day": pa.array([d for _, d in batch], pa.date32()),
        }
    )
    cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    try:
        cur.execute("SET LOCAL jit = off")  # short index lookups: compiling costs more
        cur.adbc_ingest("stratum_export_days", days, mode="replace", temporary=True)
        cur.execute(_KEPT)
        kept_table = cur.fetch_arrow_table()
        change_seq = {
            (int(u), d): int(c)
            for u, d, c in zip(
                kept_table.column("user_id").to_pylist(),
                kept_table.column("day").to_pylist(),
                kept_table.column("change_seq").to_pylist(),
                strict=True,
            )
        }
        tables = read_tiers(cur, sorted(change_seq), metrics, cutoff, LAKE_TABLES)
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    return Snapshot(change_seq, tables)


def read_tiers(
    cur: adbc.Cursor,
    pairs: Sequence[Pair],
    metrics: Sequence[str],
    cutoff: date,
    tiers: Sequence[str],
) -> dict[str, pa.Table]:
    """The warm-store rows of each of `tiers` for the partitions holding `pairs`: the days
    themselves for raw/agg_1m, their whole months/years (up to `cutoff`) for agg_1h/agg_1d.
    Runs in the caller's transaction."""
    if not pairs:
        return {}
    windows = _windows(pairs, metrics, cutoff)
    cur.adbc_ingest("stratum_export_windows", windows, mode="replace", temporary=True)
    tables: dict[str, pa.Table] = {}
    for tier in tiers:
        cur.execute(_tier_sql(tier))
        tables[tier] = _assemble(tier, cur.fetch_arrow_table(), windows, metrics)
    return tables


def _assemble(tier: str, fetched: pa.Table, windows: pa.Table, metrics: Sequence[str]) -> pa.Table:
    """Rows of the tier's data schema from one array per window."""
    schema = data_schema(tier)
    if fetched.num_rows == 0:
        return schema.empty_table()
    fetched = fetched.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(fetched.column("ts")), 0).to_numpy()
    window = np.repeat(fetched.column("idx").to_numpy(), lengths)
    ts = pc.list_flatten(fetched.column("ts")).cast(schema.field("ts").type)
    if replaces_days(tier):  # one window per day: the row's day is its window's
        window_days = windows.column("lo").cast(pa.int64()).to_numpy() // _MICROS_PER_DAY
        days = window_days.astype(np.int32)[window]
    else:
        days = (ts.cast(pa.int64()).to_numpy() // _MICROS_PER_DAY).astype(np.int32)
    # Windows cycle through the metrics (see _windows): a dictionary column, no string copies.
    codes = (window % len(metrics)).astype(np.int32)
    columns: dict[str, Any] = {
        "user_id": pa.array(windows.column("user_id").to_numpy()[window]),
        "date": pa.array(days).cast(pa.date32()),
        "metric": pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(metrics, pa.string())),
        "ts": ts,
    }
    for name in value_columns(tier):
        columns[name] = pc.list_flatten(fetched.column(name)).cast(schema.field(name).type)
    return pa.Table.from_arrays([columns[f.name] for f in schema], names=schema.names)


# -- writing, verifying and recording one batch --------------------------------------------


def export_batch(conn: psycopg.Connection, lake: Lake, snapshot: Snapshot, tally: Tally) -> None:
    pairs = snapshot.pairs
    verified: dict[str, dict[Pair, Stat]] = {}
    failed: dict[str, set[Pair]] = {}
    stale_rows: dict[str, set[Pair]] = {}  # other days' lake_days rows no longer true
    versions: dict[str, int] = {}
    files: dict[str, list[tuple[str, int, str]]] = {}
    for tier in LAKE_TABLES:
        table = snapshot.tables[tier]
        by_day = replaces_days(tier)
        partitions = {partition_of(tier, u, d) for u, d in pairs}
        source = day_checksums(tier, table)  # here, not on the reader: it waits on PostgreSQL
        version = lake.replace_days(tier, table, pairs)
        versions[tier] = version
        added = lake.added_files(tier, version)
        # Other days the commit rewrote may change records: a coarse partition holds other
        # days; a fine tier's new file may hold a compacted month's other days, copied.
        if by_day:
            spans = [(f.user_id, f.first_day, f.last_day) for _, f in added]
        else:
            spans = [(key[0], *partition_days(tier, key)) for key in partitions]
        others = _recorded_in(conn, tier, spans, pairs)
        files[tier] = _file_records(lake, added)
        wanted = set(pairs) | set(others)
        # A file that does not read back fails its days only (absent from `back`).
        unreadable: dict[Pair, str] = {}
        back = lake.day_stats(tier, wanted, version=version, damaged=unreadable)
        verified[tier] = {p: back[p] for p in pairs if back.get(p) == source.get(p, (0, 0))}
        failed[tier] = {p for p in pairs if p not in verified[tier]}
        stale_rows[tier] = {p for p, stat in others.items() if back.get(p) != stat}
        if by_day:
            counts = tally.fine.setdefault(tier, [0, 0, 0])
            counts[0] += sum(count for count, _ in source.values())
            counts[1] += sum(f.size_bytes for _, f in added)
            counts[2] += len(added)
        else:
            rows = dict.fromkeys(partitions, 0)
            for (u, d), (count, _) in source.items():
                rows[partition_of(tier, u, d)] += count
            sizes = _written(lake, tier, version, partitions)
            for key in partitions:
                tally.written[(tier, key)] = (rows[key], *sizes.get(key, (0, 0)))
        tally.versions[tier] = version
        for u, d in sorted(failed[tier]):
            log.error(
                "sync: %s user %s day %s read back %s, source %s",
                tier,
                u,
                d,
                back.get((u, d), unreadable.get((u, d))),
                source.get((u, d), (0, 0)),
            )
            tally.failed.append((u, d, tier))
    synced = [p for p in pairs if all(p in verified[t] for t in LAKE_TABLES)]
    _record(conn, snapshot, verified, failed, stale_rows, versions, synced)
    _record_files(conn, files, versions, verified)
    tally.days += len(synced)


def _file_records(lake: Lake, added: list[tuple[str, LakeFile]]) -> list[tuple[str, int, str]]:
    """(relative path, size, hash) of the files a commit added; hashed before the read-back,
    so that what is recorded is what was verified."""
    return [(relative, f.size_bytes, file_digest(lake.storage, f.path)) for relative, f in added]


def _record_files(
    conn: psycopg.Connection,
    files: dict[str, list[tuple[str, int, str]]],
    versions: dict[str, int],
    verified: dict[str, dict[Pair, Stat]],
) -> None:
    """Record the committed files' sizes and hashes; a re-exported day is no longer damaged."""
    rows = [
        (t, path, size, digest, versions[t])
        for t, listed in files.items()
        for path, size, digest in listed
    ]
    record_files(conn, rows)
    repaired = [(u, t, d) for t, stats in verified.items() for u, d in stats]
    if repaired:
        conn.execute(
            "DELETE FROM lake_damage l USING unnest(%s::int[], %s::text[], %s::date[]) "
            "AS x(user_id, tier, day) "
            "WHERE l.user_id = x.user_id AND l.tier = x.tier AND l.day = x.day",
            [list(c) for c in zip(*repaired, strict=True)],
        )


def _recorded_in(
    conn: psycopg.Connection,
    tier: str,
    spans: Sequence[tuple[int, date, date]],
    exclude: list[Pair],
) -> dict[Pair, Stat]:
    """lake_days rows of `tier` in these (user, first day, last day) spans, but `exclude`."""
    if not spans:
        return {}
    rows = conn.execute(
        "SELECT l.user_id, l.day, l.rows, l.checksum FROM lake_days l "
        "JOIN unnest(%s::int[], %s::date[], %s::date[]) AS p(user_id, lo, hi) "
        "ON l.user_id = p.user_id AND l.day BETWEEN p.lo AND p.hi WHERE l.tier = %s",
        ([s[0] for s in spans], [s[1] for s in spans], [s[2] for s in spans], tier),
    ).fetchall()
    skip = set(exclude)
    return {(u, d): (r, c) for u, d, r, c in rows if (u, d) not in skip}


def _written(
    lake: Lake, tier: str, version: int, partitions: set[PartitionKey]
) -> dict[PartitionKey, tuple[int, int]]:
    """Bytes and files of each given partition at `version` (just written by us)."""
    if not partitions:
        return {}
    users = sorted({key[0] for key in partitions})
    spans = [partition_days(tier, key) for key in partitions]
    start = midnight(min(lo for lo, _ in spans))
    end = midnight(max(hi for _, hi in spans) + timedelta(days=1))
    sizes: dict[PartitionKey, tuple[int, int]] = {}
    for f in lake.files(tier, users, start, end, version=version).files:
        key = partition_of(tier, f.user_id, f.first_day)
        if key in partitions:
            size, files = sizes.get(key, (0, 0))
            sizes[key] = (size + f.size_bytes, files + 1)
    return sizes


def _record(
    conn: psycopg.Connection,
    snapshot: Snapshot,
    verified: dict[str, dict[Pair, Stat]],
    failed: dict[str, set[Pair]],
    stale_rows: dict[str, set[Pair]],
    versions: dict[str, int],
    synced: list[Pair],
) -> None:
    upserts = [
        (u, tier, d, rows, checksum, snapshot.change_seq[(u, d)], versions[tier])
        for tier, stats in verified.items()
        for (u, d), (rows, checksum) in stats.items()
    ]
    deletes = [
        (u, tier, d) for tier in LAKE_TABLES for u, d in sorted(failed[tier] | stale_rows[tier])
    ]
    with conn.transaction():
        if upserts:
            columns = list(zip(*upserts, strict=True))
            conn.execute(
                "INSERT INTO lake_days (user_id, tier, day, rows, checksum, change_seq, "
                "lake_version, verified_at) "
                "SELECT *, now() FROM unnest(%s::int[], %s::text[], %s::date[], %s::bigint[], "
                "%s::bigint[], %s::bigint[], %s::bigint[]) "
                "ON CONFLICT (user_id, tier, day) DO UPDATE SET rows = EXCLUDED.rows, "
                "checksum = EXCLUDED.checksum, change_seq = EXCLUDED.change_seq, "
                "lake_version = EXCLUDED.lake_version, verified_at = EXCLUDED.verified_at",
                [list(c) for c in columns],
            )
        if deletes:
            columns = list(zip(*deletes, strict=True))
            conn.execute(
                "DELETE FROM lake_days l USING unnest(%s::int[], %s::text[], %s::date[]) "
                "AS x(user_id, tier, day) "
                "WHERE l.user_id = x.user_id AND l.tier = x.tier AND l.day = x.day",
                [list(c) for c in columns],
            )
        if synced:
            conn.execute(
                "UPDATE day_state d SET synced_seq = x.seq "
                "FROM unnest(%s::int[], %s::date[], %s::bigint[]) AS x(user_id, day, seq) "
                "WHERE d.user_id = x.user_id AND d.day = x.day AND d.synced_seq < x.seq",
                (
                    [u for u, _ in synced],
                    [d for _, d in synced],
                    [snapshot.change_seq[p] for p in synced],
                ),
            )
        conn.execute("SELECT nextval('catalog_seq')")  # what the router may serve moved
