"""Scrub and repair the lake (`stratum verify`, nightly; `stratum repair`).

verify: every file of every table's latest version is checked against the size and content
hash recorded when it was committed (a file without a record, committed before records were
kept: its size in the log, a full read with page checksums verified, and its rows against the
days' verified checksums, after which its hash is recorded); every verified lake day must
still have a file in its partition; and no day may be verified at a version newer than its
table's log reaches.
What fails is recorded in lake_damage: the router stops serving those days from the lake at
once (the warm store answers while it holds them, else 503 lake_damaged).

repair: a damaged day the warm store still holds (not tiered, or a 1h/1d rollup, which the
warm store keeps) is queued for a fresh export and synced now; the others are listed: only a
backup of the lake can restore them.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import psycopg

from engine.tiers import LAKE_TABLES, TIERED
from lake import Lake, LakeFile, partition_of
from lake.integrity import check_file, check_size, file_days, read_hashed
from lake.layout import partition_days, replaces_days
from sync.export import SyncResult, sync_to_lake
from sync.lakefiles import DamageRow, days_ahead, record_damage, record_files
from sync.runs import SYNC_LOCK, advisory_lock

log = logging.getLogger(__name__)

_FINE = tuple(t.lake_table for t in TIERED)


@dataclass(frozen=True)
class VerifyResult:
    files: int  # files checked (present, of their recorded size)
    bytes: int  # bytes of the files hashed
    damaged: list[DamageRow]  # (user, tier, day, why), newly found
    seconds: float
    hashed: int = 0  # files whose content was hashed (this run's rolling slice)


@dataclass(frozen=True)
class RepairResult:
    requeued: list[tuple[int, str, date]]  # re-exported from the warm store
    backup_only: list[DamageRow]  # the warm store no longer holds these: restore from backup
    sync: SyncResult | None
    seconds: float


def scrub_slice(scrubbed: Mapping[str, int | None], run: int, nights: int) -> set[str]:
    """The files scrub run ``run`` hashes, of those ``scrubbed`` maps to the run that last
    hashed them (None: none since recorded): the new ones, those hashed ``nights`` runs ago,
    and the longest unhashed 1/``nights`` of the others. So each file is hashed again within
    ``nights`` runs, and a night's share stays near 1/``nights`` of the lake."""
    new = {path for path, last in scrubbed.items() if last is None}
    old = sorted((last, path) for path, last in scrubbed.items() if last is not None)
    due = {path for last, path in old if last <= run - nights}
    share = {path for _, path in old[: math.ceil(len(old) / nights)]}
    return new | due | share


def verify_lake(url: str, lake: Lake, nights: int = 1) -> VerifyResult:
    """Check every lake file's presence and size, hash a rolling slice (``nights``: each file
    within that many runs; 1: all of them), and record what fails."""
    started = time.perf_counter()
    files = hashed = size = 0
    damaged: dict[tuple[int, str, date], str] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        run = conn.execute("SELECT nextval('lake_scrub_seq')").fetchone()
        assert run is not None
        for user_id, table, day, why in days_ahead(conn, lake):
            damaged[(user_id, table, day)] = why
        for table in LAKE_TABLES:
            records: dict[str, tuple[int, str | None, int | None]] = {
                path: (int(recorded_size), digest, scrubbed)
                for path, recorded_size, digest, scrubbed in conn.execute(
                    "SELECT path, size, sha256, scrubbed FROM lake_files WHERE tier = %s",
                    (table,),
                )
            }
            version = lake.version(table)
            entries = lake.entries(table)
            chosen = scrub_slice(
                {relative: records.get(relative, (0, None, None))[2] for relative, _ in entries},
                run[0],
                nights,
            )
            # The days each file may hold: a fine tier's month holds several files, each its
            # own days; a day two files may hold is "crowded" (a crash or a foreign writer).
            holders = Counter(day for _, f in entries for day in file_days(f))
            done: list[str] = []
            for relative, lake_file in entries:
                files += 1
                recorded_size, digest, _ = records.get(relative, (lake_file.size_bytes, None, None))
                if relative in chosen:
                    hashed += 1
                    size += lake_file.size_bytes
                    done.append(relative)
                    problem = check_file(lake.storage, lake_file.path, recorded_size, digest)
                    if problem is None and digest is None:
                        crowded = any(holders[day] > 1 for day in file_days(lake_file))
                        problem = _adopt(conn, lake, table, relative, lake_file, version, crowded)
                else:
                    problem = check_size(lake.storage, lake_file.path, recorded_size)
                if problem is not None:
                    log.error("verify: %s/%s: %s", table, relative, problem)
                    for user_id, day in file_days(lake_file):
                        damaged[(user_id, table, day)] = f"{relative}: {problem}"
            conn.execute(
                "UPDATE lake_files SET scrubbed = %s, scrubbed_at = now() "
                "WHERE tier = %s AND path = ANY(%s)",
                (run[0], table, done),
            )
            for user_id, day in conn.execute(
                "SELECT user_id, day FROM current_lake_days WHERE tier = %s AND rows > 0",
                (table,),
            ):
                if (user_id, day) not in holders:
                    damaged.setdefault(
                        (user_id, table, day),
                        f"verified in the lake, but no file of version {version} holds it",
                    )
        known = {
            (u, t, d)
            for u, t, d in conn.execute("SELECT user_id, tier, day FROM lake_damage").fetchall()
        }
        new = [
            (u, t, d, why) for (u, t, d), why in sorted(damaged.items()) if (u, t, d) not in known
        ]
        record_damage(conn, new)
    return VerifyResult(files, size, new, time.perf_counter() - started, hashed)


def _adopt(
    conn: psycopg.Connection,
    lake: Lake,
    table: str,
    relative: str,
    lake_file: LakeFile,
    version: int | None,
    crowded: bool,
) -> str | None:
    """A file without a recorded hash (committed before records were kept): compare its rows
    with the days' verified checksums and, when they agree, record its hash now. Why it does
    not agree, or None."""
    partition = partition_of(table, lake_file.user_id, lake_file.first_day)
    # A coarse partition's file holds all its days (those without rows included); a fine
    # tier's file only the days its statistics bound.
    if replaces_days(table):
        first, last = lake_file.first_day, lake_file.last_day
    else:
        first, last = partition_days(table, partition)
    expected = {
        (int(u), d): (int(r), int(c))
        for u, d, r, c in conn.execute(
            "SELECT user_id, day, rows, checksum FROM current_lake_days "
            "WHERE tier = %s AND user_id = %s AND day BETWEEN %s AND %s",
            (table, lake_file.user_id, first, last),
        )
    }
    if not expected or version is None:
        return None  # nothing verified to compare with: the structure check must do
    if crowded:
        return None  # one file of several: its rows alone are not the day's
    # One read for both: the hash recorded is of the bytes compared.
    digest, found = read_hashed(lake.storage, table, lake_file.path, partition)
    for day, stat in expected.items():
        if found.get(day, (0, 0)) != stat:
            return f"rows differ from the checksum verified for {day[1]}"
    record_files(conn, [(table, relative, lake_file.size_bytes, digest, version)])
    return None


def repair_lake(
    url: str, lake: Lake, *, grace_days: int, batch_days: int, today: date | None = None
) -> RepairResult:
    """Verify, re-export the damaged days the warm store holds, list the rest."""
    started = time.perf_counter()
    verify_lake(url, lake)
    with (
        advisory_lock(url, SYNC_LOCK, "sync or tiering run"),
        psycopg.connect(url) as conn,
        conn.transaction(),
    ):
        rows = conn.execute(
            "SELECT x.user_id, x.tier, x.day, x.reason, s.tiered_seq IS NOT NULL "
            "FROM lake_damage x LEFT JOIN day_state s USING (user_id, day) "
            "ORDER BY x.user_id, x.tier, x.day FOR UPDATE OF x"
        ).fetchall()
        requeue = [(u, t, d) for u, t, d, _, tiered in rows if not (tiered and t in _FINE)]
        backup = [(u, t, d, why) for u, t, d, why, tiered in rows if tiered and t in _FINE]
        if requeue:
            columns = [list(c) for c in zip(*requeue, strict=True)]
            # Forget the damaged copies and make the days pending: the next export
            # rewrites their partitions from the warm store and clears the damage rows.
            conn.execute(
                "DELETE FROM lake_days l USING unnest(%s::int[], %s::text[], %s::date[]) "
                "AS x(user_id, tier, day) "
                "WHERE l.user_id = x.user_id AND l.tier = x.tier AND l.day = x.day",
                columns,
            )
            conn.execute(
                "UPDATE day_state d SET synced_seq = 0 "
                "FROM unnest(%s::int[], %s::date[]) AS x(user_id, day) "
                "WHERE d.user_id = x.user_id AND d.day = x.day",
                (columns[0], columns[2]),
            )
            conn.execute("SELECT nextval('catalog_seq')")
    synced = None
    if requeue:
        synced = sync_to_lake(url, lake, grace_days=grace_days, batch_days=batch_days, today=today)
    for user_id, table, day, why in backup:
        log.error(
            "repair: user %s %s %s needs a restore from a backup: %s", user_id, day, table, why
        )
    return RepairResult(requeue, backup, synced, time.perf_counter() - started)
