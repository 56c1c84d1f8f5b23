"""The lake's integrity records in the warm store: file hashes, damaged days, log versions.

`lake_files` holds each committed file's size and content hash; `lake_damage` the lake days
found damaged (queued for `stratum repair`). A table whose Delta log is older than the
version some day was verified at lost commits: sync and maintenance refuse to write over it
(that would reuse the lost version numbers) until `stratum verify` has recorded the lost
days and `stratum repair` dealt with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date

import psycopg

from engine.errors import SyncFailed
from engine.tiers import LAKE_TABLES
from lake import Lake

FileRow = tuple[str, str, int, str, int]  # tier, relative path, size, sha256, lake version
DamageRow = tuple[int, str, date, str]  # user, tier, day, reason

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
