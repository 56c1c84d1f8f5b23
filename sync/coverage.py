"""What the lake covers, per user and per lake table (for `stratum sync status` and the demo)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import psycopg

from engine.tiers import LAKE_TABLES
from lake import Lake


@dataclass(frozen=True)
class UserCoverage:
    user_id: int
    first_lake_day: date | None  # days the router may serve from the lake (raw tier)
    last_lake_day: date | None
    days_in_lake: int
    days_pending: int  # changed since their last sync (or never synced)
    days_tiered: int  # raw and 1m rows only in the lake


@dataclass(frozen=True)
class LakeTableSummary:
    table: str
    version: int | None
    files: int
    bytes: int
    rows: int


_ALL_TIME = (datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC))

# current_lake_days: verified and unchanged since, the days the router serves from the lake.
_COVERAGE = """
SELECT d.user_id, min(c.day), max(c.day), count(c.day),
       count(*) FILTER (WHERE d.change_seq > d.synced_seq),
       count(*) FILTER (WHERE d.tiered_seq IS NOT NULL)
FROM day_state d
LEFT JOIN current_lake_days c ON c.user_id = d.user_id AND c.day = d.day AND c.tier = 'raw'
GROUP BY d.user_id
ORDER BY d.user_id
"""


def user_coverage(url: str) -> list[UserCoverage]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(_COVERAGE).fetchall()
    return [UserCoverage(int(u), f, la, int(n), int(p), int(t)) for u, f, la, n, p, t in rows]


def lake_summary(lake: Lake) -> list[LakeTableSummary]:
    """Version, files, bytes and rows of each lake table's latest version."""
    summary = []
    for table in LAKE_TABLES:
        files = lake.files(table, None, *_ALL_TIME)
        summary.append(
            LakeTableSummary(
                table,
                files.version,
                len(files.files),
                sum(f.size_bytes for f in files.files),
                files.rows,
            )
        )
    return summary
