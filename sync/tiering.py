"""Tiering (`stratum tier`): drop raw and 1m rows the lake holds, verified, from the warm store.

A (user, day) is tiered only when its lake_days rows for raw AND agg_1m carry the day's
current change number (nothing written since the verified export) and the lake still holds
it as recorded: its file hashes to the record made when its days were verified, or it reads
back equal. Its day_state row is locked while it is checked and deleted, so a
concurrent ingest either lands first (the day changed: not tiered) or waits and then copies
the day back from the lake (see sync/rehydrate.py). data_1h and data_1d stay forever.

On TimescaleDB whole chunks go (drop_chunks) when every (user, day) they hold is tiered or
tierable; the rest is deleted row by row. A day whose lake copy no longer matches its record
is not tiered: its lake_days rows are dropped and it is queued for a fresh sync, so the
router reads it from the warm store meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import psycopg

from engine.tiers import RAW_MINUTE_DAYS, TIERED
from engine.timestamps import midnight
from lake import Lake
from sync import timescale
from sync.lakefiles import record_damage, vouched_days
from sync.runs import SYNC_LOCK, advisory_lock

log = logging.getLogger(__name__)

Pair = tuple[int, date]
Progress = Callable[[int, int, int], None]  # (days done, days total, rows removed)

RAW, MINUTE = TIERED  # the queries below name their tables
_LOCK_TIMEOUT = "5s"  # how long a chunk drop waits for running ingests before giving up

# Synced (the router counts a day with change_seq > synced_seq as unsynced and reads it from
# the warm store, whatever lake_days says) and verified in both fine tiers at that change.
# The rule of the current_lake_days view, spelled against `d` itself: under FOR UPDATE OF d
# PostgreSQL re-checks these conditions on the locked row version, not on the view's own
# read of day_state.
_VERIFIED = """
FROM day_state d
JOIN lake_days r ON r.user_id = d.user_id AND r.day = d.day AND r.tier = 'raw'
                AND r.change_seq = d.change_seq
JOIN lake_days m ON m.user_id = d.user_id AND m.day = d.day AND m.tier = 'agg_1m'
                AND m.change_seq = d.change_seq
"""
_CANDIDATES = f"""
SELECT d.user_id, d.day {_VERIFIED}
WHERE d.day < %s AND d.tiered_seq IS NULL AND d.synced_seq = d.change_seq
ORDER BY d.user_id, d.day
"""  # noqa: S608 (constants)
# Locked in key order; re-checked on the locked row version, so a day changed meanwhile drops
# out here.
_LOCK_BATCH = f"""
SELECT d.user_id, d.day, r.rows, r.checksum, m.rows, m.checksum {_VERIFIED}
JOIN unnest(%s::int[], %s::date[]) AS w(user_id, day) ON d.user_id = w.user_id AND d.day = w.day
WHERE d.tiered_seq IS NULL AND d.synced_seq = d.change_seq
ORDER BY d.user_id, d.day
FOR UPDATE OF d
"""  # noqa: S608 (constants)
# Every day_state row of a span, tiered, tierable or not, locked.
_LOCK_SPAN = """
SELECT d.user_id, d.day, d.tiered_seq IS NOT NULL, d.synced_seq = d.change_seq,
       r.rows, r.checksum, m.rows, m.checksum
FROM day_state d
LEFT JOIN lake_days r ON r.user_id = d.user_id AND r.day = d.day AND r.tier = 'raw'
                     AND r.change_seq = d.change_seq
LEFT JOIN lake_days m ON m.user_id = d.user_id AND m.day = d.day AND m.tier = 'agg_1m'
                     AND m.change_seq = d.change_seq
WHERE d.day BETWEEN %s AND %s
ORDER BY d.user_id, d.day
FOR UPDATE OF d
"""
_WINDOWS = """
CREATE TEMPORARY TABLE tier_window ON COMMIT DROP AS
SELECT w.user_id, w.day, m.name AS metric,
       (w.day::timestamp AT TIME ZONE 'UTC') AS lo,
       ((w.day + 1)::timestamp AT TIME ZONE 'UTC') AS hi
FROM unnest(%s::int[], %s::date[]) AS w(user_id, day) CROSS JOIN metrics m
"""
_IN_WINDOW = "s.user_id = w.user_id AND s.metric = w.metric AND s.ts >= w.lo AND s.ts < w.hi"


@dataclass(frozen=True)
class TieringResult:
    days: int  # user-days tiered by this run
    rows: dict[str, int]  # rows removed per warm-store table
    chunks: int  # TimescaleDB chunks dropped
    refused: list[tuple[int, date, str]]  # (user, day, why) not tiered, queued for re-sync
    seconds: float
    read_back: int = 0  # (day, tier)s whose lake copy was decoded: its file's hash did not do

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


@dataclass
class _Tally:
    days: int = 0
    rows: dict[str, int] = field(default_factory=lambda: {t.warm_table: 0 for t in TIERED})
    chunks: int = 0
    refused: list[tuple[int, date, str]] = field(default_factory=list)
    read_back: int = 0

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def handled(self) -> int:
        """User-days done with: tiered, or refused and queued for a re-sync."""
        return self.days + len(self.refused)


@dataclass(frozen=True)
class _Locked:
    """A locked, tierable day with what lake_days recorded for it."""

    pair: Pair
    raw: tuple[int, int]
    agg_1m: tuple[int, int]


def tiering_cutoff(today: date, older_than_days: int) -> date:
    return today - timedelta(days=older_than_days)


def tier_warm_store(
    url: str,
    lake: Lake,
    *,
    older_than_days: int,
    batch_days: int = 64,
    today: date | None = None,
    progress: Progress | None = None,
) -> TieringResult:
    """Tier every verified day older than `older_than_days`; SyncFailed if a sync runs."""
    started = time.perf_counter()
    cutoff = tiering_cutoff(today or datetime.now(UTC).date(), older_than_days)
    tally = _Tally()
    with (
        advisory_lock(url, SYNC_LOCK, "sync or tiering run"),
        psycopg.connect(url, autocommit=True) as conn,
    ):
        record_location(conn, lake.root)
        # Progress counts user-days against a total known up front, through both phases
        # (whole chunks, then row by row): chunk drops can take minutes on a large store.
        total = len(_candidates(conn, cutoff))

        def report(done: int) -> None:
            if progress:
                progress(min(done, total), total, tally.total_rows)

        report(0)
        if timescale.enabled(conn):
            _drop_chunks(conn, lake, cutoff, tally, lambda: report(tally.handled))
        candidates = _candidates(conn, cutoff)  # what the chunk drops left
        done = max(total - len(candidates), tally.handled)
        report(done)
        for start in range(0, len(candidates), batch_days):
            batch = candidates[start : start + batch_days]
            _tier_batch(conn, lake, batch, tally)
            done += len(batch)
            report(done)
    return TieringResult(
        tally.days,
        tally.rows,
        tally.chunks,
        tally.refused,
        time.perf_counter() - started,
        tally.read_back,
    )


def _candidates(conn: psycopg.Connection, cutoff: date) -> list[Pair]:
    return [(int(u), d) for u, d in conn.execute(_CANDIDATES, (cutoff,)).fetchall()]


def record_location(conn: psycopg.Connection, root: str) -> None:
    conn.execute(
        "INSERT INTO lake_location (root) VALUES (%s) ON CONFLICT (id) DO UPDATE "
        "SET root = EXCLUDED.root, updated_at = now() WHERE lake_location.root <> EXCLUDED.root",
        (str(root),),
    )


def _tier_batch(conn: psycopg.Connection, lake: Lake, batch: list[Pair], tally: _Tally) -> None:
    with conn.transaction():
        rows = conn.execute(_LOCK_BATCH, ([u for u, _ in batch], [d for _, d in batch])).fetchall()
        locked = [_Locked((int(u), d), (rr, rc), (mr, mc)) for u, d, rr, rc, mr, mc in rows]
        good = _verified(conn, lake, locked, tally)
        if good:
            _delete_rows(conn, good)
            _mark_tiered(conn, good)
            kept = set(good)
            _count_tiered(tally, [day for day in locked if day.pair in kept])


def _verified(
    conn: psycopg.Connection, lake: Lake, locked: Sequence[_Locked], tally: _Tally
) -> list[Pair]:
    """The locked days whose lake copy and warm rows still match the record; the others are
    un-recorded and queued for a fresh sync."""
    if not locked:
        return []
    pairs = [day.pair for day in locked]
    # A file that cannot be read refuses its days only: the rest of the run goes on.
    damaged_raw: dict[Pair, str] = {}
    damaged_1m: dict[Pair, str] = {}
    lake_raw = _lake_copy(
        conn, lake, RAW.lake_table, {d.pair: d.raw for d in locked}, damaged_raw, tally
    )
    lake_1m = _lake_copy(
        conn, lake, MINUTE.lake_table, {d.pair: d.agg_1m for d in locked}, damaged_1m, tally
    )
    record_damage(
        conn,
        [(u, RAW.lake_table, d, why) for (u, d), why in damaged_raw.items()]
        + [(u, MINUTE.lake_table, d, why) for (u, d), why in damaged_1m.items()],
    )
    warm = _warm_counts(conn, pairs)
    good: list[Pair] = []
    bad: list[Pair] = []
    for day in locked:
        why = None
        problem = damaged_raw.get(day.pair) or damaged_1m.get(day.pair)
        if problem is not None:
            why = f"lake file damaged (queued for repair): {problem}"
        elif lake_raw[day.pair] != day.raw or lake_1m[day.pair] != day.agg_1m:
            why = "lake copy differs from its verification record"
        elif warm[day.pair] != (day.raw[0], day.agg_1m[0]):
            why = "warm-store row count differs from the verified export"
        if why is None:
            good.append(day.pair)
        else:
            log.error("tier: user %s day %s not tiered: %s", *day.pair, why)
            tally.refused.append((*day.pair, why))
            bad.append(day.pair)
    if bad:
        # The router must stop serving these from the lake; the next sync re-exports them.
        users, days = [u for u, _ in bad], [d for _, d in bad]
        conn.execute(
            "DELETE FROM lake_days l USING unnest(%s::int[], %s::date[]) AS w(user_id, day) "
            "WHERE l.user_id = w.user_id AND l.day = w.day AND l.tier IN ('raw', 'agg_1m')",
            (users, days),
        )
        conn.execute(
            "UPDATE day_state d SET synced_seq = 0 FROM unnest(%s::int[], %s::date[]) "
            "AS w(user_id, day) WHERE d.user_id = w.user_id AND d.day = w.day",
            (users, days),
        )
        conn.execute("SELECT nextval('catalog_seq')")
    return good


def _lake_copy(
    conn: psycopg.Connection,
    lake: Lake,
    tier: str,
    recorded: dict[Pair, tuple[int, int]],
    damaged: dict[Pair, str],
    tally: _Tally,
) -> dict[Pair, tuple[int, int]]:
    """(rows, checksum) the lake holds of each day: its record when the day's file still
    hashes to the one recorded (see sync/lakefiles.py), else read back from the file. A day
    of a participant-month file read back costs decoding the month; a hash, reading it."""
    vouched = vouched_days(conn, lake, tier, recorded)
    found = {pair: stat for pair, stat in recorded.items() if pair in vouched}
    rest = [pair for pair in recorded if pair not in vouched]
    if rest:
        found.update(lake.day_stats(tier, rest, damaged=damaged))
    tally.read_back += len(rest)
    return found


# Rows per participant of one UTC day, for the participants asked. The day's bounds are
# plain parameters, so TimescaleDB excludes the other chunks when it plans (a bound computed
# per joined row, as a correlated count per (user, day, metric) had, probed every chunk for
# each: most of a tiering run's time). The 1m count is what the data_1m view holds: stored
# buckets, plus the raw rows of the per-minute (user, metric)s, counted from the raw pass.
_DAY_COUNTS = f"""
WITH r AS (
    SELECT user_id, metric, count(*) AS n FROM {RAW.warm_table}
    WHERE user_id = ANY(%(users)s) AND ts >= %(lo)s AND ts < %(hi)s GROUP BY user_id, metric
)
SELECT 'raw', user_id, sum(n) FROM r GROUP BY user_id
UNION ALL
SELECT '1m', user_id, count(*) FROM {MINUTE.write_table}
WHERE user_id = ANY(%(users)s) AND ts >= %(lo)s AND ts < %(hi)s GROUP BY user_id
UNION ALL
SELECT '1m', r.user_id, sum(r.n) FROM r JOIN {RAW_MINUTE_DAYS} d
  ON d.user_id = r.user_id AND d.metric = r.metric AND d.day = %(day)s GROUP BY r.user_id
"""  # noqa: S608 (constants only)


def _warm_counts(conn: psycopg.Connection, pairs: Sequence[Pair]) -> dict[Pair, tuple[int, int]]:
    """(raw rows, 1m rows) per (user, day) in the warm store: one statement per distinct day
    (a night's tiering is one day of every participant)."""
    users_of: dict[date, list[int]] = {}
    for user_id, day in pairs:
        users_of.setdefault(day, []).append(user_id)
    found: dict[Pair, list[int]] = {pair: [0, 0] for pair in pairs}
    for day, users in sorted(users_of.items()):
        params = {
            "users": users,
            "day": day,
            "lo": midnight(day),
            "hi": midnight(day + timedelta(days=1)),
        }
        for table, user_id, count in conn.execute(_DAY_COUNTS, params).fetchall():
            found[(int(user_id), day)][0 if table == "raw" else 1] += int(count)
    return {pair: (raw, minute) for pair, (raw, minute) in found.items()}


def _delete_rows(conn: psycopg.Connection, pairs: Sequence[Pair]) -> None:
    """Delete the days' raw_data and stored 1m rows, and their per-minute records (their 1m
    buckets were their raw rows)."""
    conn.execute(_WINDOWS, ([u for u, _ in pairs], [d for _, d in pairs]))
    per_minute = "s.user_id = w.user_id AND s.metric = w.metric AND s.day = w.day"
    for table in (*(tier.write_table for tier in TIERED), RAW_MINUTE_DAYS):
        where = per_minute if table == RAW_MINUTE_DAYS else _IN_WINDOW
        conn.execute(f"DELETE FROM {table} s USING tier_window w WHERE {where}")  # noqa: S608
    conn.execute("DROP TABLE tier_window")


def _count_tiered(tally: _Tally, days: Sequence[_Locked]) -> None:
    """Count days tiered and their rows, as their verified lake records count them (the warm
    rows were checked to match before they were deleted)."""
    tally.rows[RAW.warm_table] += sum(day.raw[0] for day in days)
    tally.rows[MINUTE.warm_table] += sum(day.agg_1m[0] for day in days)
    tally.days += len(days)


def _mark_tiered(conn: psycopg.Connection, pairs: Sequence[Pair]) -> None:
    conn.execute(
        "UPDATE day_state d SET tiered_seq = d.change_seq, tiered_at = now() "
        "FROM unnest(%s::int[], %s::date[]) AS w(user_id, day) "
        "WHERE d.user_id = w.user_id AND d.day = w.day",
        ([u for u, _ in pairs], [d for _, d in pairs]),
    )
    conn.execute("SELECT nextval('catalog_seq')")  # these days are now served only from the lake


# -- TimescaleDB: whole chunks ---------------------------------------------------------------


def span_days(start: datetime, end: datetime) -> tuple[date, date]:
    """First and last UTC day that a chunk range [start, end) overlaps."""
    last = (end - timedelta(microseconds=1)).astimezone(UTC).date()
    return start.astimezone(UTC).date(), last


def droppable(states: Iterable[tuple[bool, bool]]) -> bool:
    """A chunk may go when it holds at least one tierable day and every (user, day) in it is
    either already tiered or tierable. `states`: (tiered, tierable) per (user, day)."""
    seen = list(states)
    return any(tierable for _, tierable in seen) and all(t or ok for t, ok in seen)


def chunk_spans(conn: psycopg.Connection, cutoff: date) -> list[tuple[datetime, datetime]]:
    """Distinct chunk ranges of the tiered hypertables that end before the cutoff."""
    older_than = midnight(cutoff)
    spans = {
        (start, end)
        for table in timescale.HYPERTABLES
        for _, start, end in timescale.chunk_ranges(conn, table, older_than)
    }
    return sorted(spans)


def _drop_chunks(
    conn: psycopg.Connection,
    lake: Lake,
    cutoff: date,
    tally: _Tally,
    after_each: Callable[[], None],
) -> None:
    for start, end in chunk_spans(conn, cutoff):
        _drop_chunk_span(conn, lake, start, end, tally)
        after_each()


def _drop_chunk_span(
    conn: psycopg.Connection, lake: Lake, start: datetime, end: datetime, tally: _Tally
) -> None:
    first, last = span_days(start, end)
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
            # Writers first: an ingest holding the chunk finishes (and marks its days)
            # before we look, and none starts until we commit.
            timescale.lock_for_drop(conn)
            rows = conn.execute(_LOCK_SPAN, (first, last)).fetchall()
            states = [
                (tiered, synced and rr is not None and mr is not None)
                for _, _, tiered, synced, rr, _, mr, _ in rows
            ]
            if not droppable(states):
                return
            locked = [
                _Locked((int(u), d), (rr, rc), (mr, mc))
                for u, d, tiered, _, rr, rc, mr, mc in rows
                if not tiered
            ]
            good = _verified(conn, lake, locked, tally)
            if len(good) != len(locked):
                return  # the refusals are recorded; the chunk waits for a re-sync
            for table in timescale.HYPERTABLES:
                tally.chunks += timescale.drop_chunks_between(conn, table, start, end)
            _delete_rows(conn, good)  # parts of these days lying in neighbouring chunks
            _mark_tiered(conn, good)
            _count_tiered(tally, locked)
    except psycopg.errors.LockNotAvailable:
        log.warning("tier: chunk %s..%s busy; its days are tiered row by row", start, end)
