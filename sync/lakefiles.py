"""The lake's integrity records in the warm store: file hashes, damaged days, log versions.

`lake_files` holds each committed file's size and content hash; `lake_damage` the lake days
found damaged (queued for `stratum repair`). A table whose Delta log is older than the
version some day was verified at lost commits: sync and maintenance refuse to write over it
(that would reuse the lost version numbers) until `stratum verify` has recorded the lost
days and `stratum repair` dealt with them.

A file's hash is recorded only from bytes whose days were compared with their verification
records (lake_days): sync's read-back, compaction's and relayout's (`record_checked_files`),
verify's. A day that did not compare equal loses its record, and lake_days rows are written
only by sync, together with a new file for their day, at a later lake version. So a file that
still hashes to its record, recorded at or after the version its day was verified at, holds
that day exactly as recorded: tiering takes that (`vouched_days`, one hash) instead of
decoding a participant-month to check one day.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import psycopg

from engine.errors import SyncFailed
from engine.tiers import LAKE_TABLES
from lake import Lake
from lake.integrity import check_file
from lake.maintenance import CheckedFile

FileRow = tuple[str, str, int, str, int]  # tier, relative path, size, sha256, lake version
DamageRow = tuple[int, str, date, str]  # user, tier, day, reason

_HASH_THREADS = 4  # hashlib releases the GIL: reads and hashes overlap

# Days verified at a version the table's log does not reach, not yet recorded as damaged.
_AHEAD = """
SELECT l.user_id, l.day, l.lake_version FROM current_lake_days l
WHERE l.tier = %s AND l.lake_version > %s
  AND NOT EXISTS (SELECT 1 FROM lake_damage x
                  WHERE x.user_id = l.user_id AND x.tier = l.tier AND x.day = l.day)
ORDER BY l.user_id, l.day
"""


def record_files(conn: psycopg.Connection, rows: Sequence[FileRow]) -> None:
    if not rows:
        return
    conn.execute(
        "INSERT INTO lake_files (tier, path, size, sha256, lake_version) "
        "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::bigint[]) "
        "ON CONFLICT (tier, path) DO UPDATE SET size = EXCLUDED.size, sha256 = EXCLUDED.sha256, "
        "lake_version = EXCLUDED.lake_version, recorded_at = now(), "
        "scrubbed = NULL, scrubbed_at = NULL",
        [list(c) for c in zip(*rows, strict=True)],
    )


def record_checked_files(
    conn: psycopg.Connection, tier: str, version: int, files: Sequence[CheckedFile]
) -> list[DamageRow]:
    """Record the files (written at ``version`` and read back) whose days agree with their
    current verification records. A day that does not was already wrong in the files it was
    copied from: it is returned as damage, and its file is not recorded (the scrub and
    tiering then check that file the slow way)."""
    spans = [_span(checked) for checked in files if checked.days]
    recorded: dict[int, list[tuple[date, tuple[int, int]]]] = {}
    if spans:
        # One index range over the files' users and days (a night's compaction: the same
        # month of every participant), cut to each file's days below.
        rows = conn.execute(
            "SELECT user_id, day, rows, checksum FROM current_lake_days WHERE tier = %s "
            "AND user_id = ANY(%s) AND day BETWEEN %s AND %s ORDER BY user_id, day",
            (
                tier,
                sorted({u for u, _, _ in spans}),
                min(lo for _, lo, _ in spans),
                max(hi for _, _, hi in spans),
            ),
        ).fetchall()
        for user_id, day, count, checksum in rows:
            recorded.setdefault(int(user_id), []).append((day, (int(count), int(checksum))))
    damage: list[DamageRow] = []
    records: list[FileRow] = []
    for checked in files:
        if not checked.days:
            continue  # no rows read back: nothing for its hash to vouch for
        user_id, first, last = _span(checked)
        wrong = [
            (user_id, tier, day, f"{checked.relative_path}: rows differ from those verified")
            for day, stat in recorded.get(user_id, ())
            if first <= day <= last and checked.days.get((user_id, day), (0, 0)) != stat
        ]
        damage.extend(wrong)
        if not wrong:
            records.append((tier, checked.relative_path, checked.size, checked.sha256, version))
    record_files(conn, records)
    return damage


def _span(checked: CheckedFile) -> tuple[int, date, date]:
    """(user, first day, last day) of a file's rows."""
    days = [day for _, day in checked.days]
    return next(iter(checked.days))[0], min(days), max(days)


def vouched_days(
    conn: psycopg.Connection, lake: Lake, tier: str, pairs: Iterable[tuple[int, date]]
) -> set[tuple[int, date]]:
    """The days whose file in the latest version still hashes to its record (see the
    module docstring): each holds its current verification record's rows. The file must
    also have been recorded at or after the version its day was verified at: a Delta log
    that lost commits brings back an older file, whose record may still be kept, while the
    day's record counts the rows of the file that was lost."""
    holders = lake.day_files(tier, pairs)
    paths = sorted({relative for relative, _ in holders.values()})
    records = {
        path: (int(size), sha256, int(version))
        for path, size, sha256, version in conn.execute(
            "SELECT path, size, sha256, lake_version FROM lake_files "
            "WHERE tier = %s AND path = ANY(%s)",
            (tier, paths),
        ).fetchall()
    }
    verified_at = {
        (int(user_id), day): int(version)
        for user_id, day, version in conn.execute(
            "SELECT l.user_id, l.day, l.lake_version FROM lake_days l "
            "JOIN unnest(%s::int[], %s::date[]) AS w(user_id, day) "
            "ON l.user_id = w.user_id AND l.day = w.day WHERE l.tier = %s",
            ([u for u, _ in holders], [d for _, d in holders], tier),
        ).fetchall()
    }
    located = {relative: lake_file for relative, lake_file in holders.values()}

    def intact(relative: str) -> bool:
        size, sha256, _ = records[relative]
        return check_file(lake.storage, located[relative].path, size, sha256) is None

    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        known = [path for path in paths if path in records]
        good = {path for path, ok in zip(known, pool.map(intact, known), strict=True) if ok}
    return {
        day
        for day, (relative, _) in holders.items()
        if relative in good and day in verified_at and records[relative][2] >= verified_at[day]
    }


def prune_file_records(conn: psycopg.Connection, lake: Lake) -> int:
    """Forget the records of files the latest versions no longer reference (replaced by later
    syncs or compactions; vacuum deletes them). Rows deleted."""
    deleted = 0
    for table in LAKE_TABLES:
        version = lake.version(table)
        if version is None:
            continue
        current = [path for path, _ in lake.entries(table, version)]
        # Records of later commits (a sync running meanwhile) are not ours to judge.
        cur = conn.execute(
            "DELETE FROM lake_files WHERE tier = %s AND lake_version <= %s "
            "AND NOT (path = ANY(%s))",
            (table, version, current),
        )
        deleted += max(cur.rowcount, 0)
    return deleted


def record_damage(conn: psycopg.Connection, rows: Iterable[DamageRow]) -> None:
    """Queue days for repair; the router stops serving them from the lake at once."""
    rows = list(rows)
    if not rows:
        return
    conn.execute(
        "INSERT INTO lake_damage (user_id, tier, day, reason) "
        "SELECT * FROM unnest(%s::int[], %s::text[], %s::date[], %s::text[]) "
        "ON CONFLICT (user_id, tier, day) DO UPDATE SET reason = EXCLUDED.reason",
        [list(c) for c in zip(*rows, strict=True)],
    )
    conn.execute("SELECT nextval('catalog_seq')")


def days_ahead(conn: psycopg.Connection, lake: Lake) -> list[DamageRow]:
    """Verified days whose table's log ends before the version they were verified at."""
    found: list[DamageRow] = []
    for table in LAKE_TABLES:
        version = lake.version(table, recheck=True)  # a long-lived Lake's cache may predate a loss
        current = -1 if version is None else version
        for user_id, day, verified in conn.execute(_AHEAD, (table, current)).fetchall():
            why = f"verified at lake version {verified}; the table's log ends at {version}"
            found.append((int(user_id), table, day, why))
    return found


def require_current_log(conn: psycopg.Connection, lake: Lake) -> None:
    """Refuse to write to a lake whose log lost commits (see the module docstring)."""
    ahead = days_ahead(conn, lake)
    if ahead:
        tables = sorted({t for _, t, _, _ in ahead})
        shown = ", ".join(f"user {u} {d} {t}" for u, t, d, _ in ahead[:5])
        raise SyncFailed(
            f"the Delta log of {', '.join(tables)} ends before versions the catalog verified "
            f"({len(ahead)} days, e.g. {shown}): commits were lost. Run `stratum verify` to "
            "record them, then `stratum repair`"
        )


def damage_report(url: str, lake: Lake) -> list[DamageRow]:
    """Lake days not served from the lake: recorded damage, and days verified at a version
    the table's log no longer reaches (not yet recorded)."""
    with psycopg.connect(url) as conn:
        recorded = [
            (int(u), t, d, why)
            for u, t, d, why in conn.execute(
                "SELECT user_id, tier, day, reason FROM lake_damage ORDER BY user_id, tier, day"
            ).fetchall()
        ]
        return recorded + days_ahead(conn, lake)
