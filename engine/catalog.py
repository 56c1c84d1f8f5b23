"""The catalog snapshot the planner reads: where each (user, day) may be served from.

Loading it is the only I/O of planning. Two parts, with different freshness rules:
- lake coverage (verified days per lake table) is cached per catalog_seq, which every job
  that changes it bumps. A stale cache can only be too small (a day just synced is still
  read from the warm store), never too big: lake days only become unusable by a write.
- the days written since their last sync or refresh are read fresh for every query (small,
  partial-indexed sets). They override lake coverage, so late data is never served stale,
  whatever the cache holds and however transactions interleave.
When the warm store is down, the last lake coverage still plans lake-only spans.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

import psycopg

from engine.plan import DayRange
from engine.tiers import LAKE_TABLES
from lake import Lake, LakeFile

log = logging.getLogger(__name__)

ListFiles = Callable[[str, Sequence[int], datetime, datetime, int | None], tuple[LakeFile, ...]]


@dataclass(frozen=True)
class Coverage:
    """Day ranges per user; inclusive, sorted, disjoint."""

    ranges: Mapping[int, tuple[DayRange, ...]] = field(default_factory=dict)

    def of(self, user_id: int) -> tuple[DayRange, ...]:
        return self.ranges.get(user_id, ())


@dataclass(frozen=True)
class Catalog:
    lake_days: Mapping[str, Coverage]  # lake table -> verified days (possibly cached)
    unsynced: Coverage  # days written since their last sync: never from the lake
    stale_rollups: Coverage  # days whose rollups lag raw (refresh pending)
    lake_versions: Mapping[str, int | None]  # the pinned version per lake table
    list_files: ListFiles  # exact files of a pinned version
    warm_available: bool = True


_ISLANDS = """
SELECT user_id, min(day), max(day) FROM (
    SELECT user_id, day, day - (row_number() OVER (PARTITION BY user_id ORDER BY day))::int AS grp
    FROM ({days}) AS d
) AS numbered
GROUP BY user_id, grp
ORDER BY user_id, 2
"""
# current_lake_days (sync/migrations): verified and unchanged since, what the router serves.
_LAKE_DAYS = "SELECT user_id, day FROM current_lake_days WHERE tier = %(lake_table)s"
_RECENT = (
    "SELECT user_id, day FROM day_state WHERE {condition} "
    "AND user_id = ANY(%(users)s) AND day BETWEEN %(first)s AND %(last)s"
)
_UNSYNCED = _RECENT.format(condition="change_seq > synced_seq")
_STALE = _RECENT.format(condition="change_seq > refreshed_seq")


def _islands(conn: psycopg.Connection, days_sql: str, params: dict[str, object]) -> Coverage:
    ranges: dict[int, list[DayRange]] = {}
    for user_id, first, last in conn.execute(_ISLANDS.format(days=days_sql).encode(), params):
        ranges.setdefault(user_id, []).append((first, last))
    return Coverage({u: tuple(r) for u, r in ranges.items()})


class CatalogSource:
    """Loads catalog snapshots; lake coverage is reused while catalog_seq is unchanged."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self._lock = threading.Lock()
        self._coverage: tuple[int, dict[str, Coverage]] | None = None

    def _list_files(
        self,
        lake_table: str,
        users: Sequence[int],
        start: datetime,
        end: datetime,
        version: int | None,
    ) -> tuple[LakeFile, ...]:
        return self.lake.files(lake_table, users, start, end, version).files

    def _lake_coverage(self, conn: psycopg.Connection) -> dict[str, Coverage]:
        row = conn.execute("SELECT last_value FROM catalog_seq").fetchone()
        generation = int(row[0]) if row else 0
        cached = self._coverage
        if cached is not None and cached[0] == generation:
            return cached[1]
        coverage = {
            table: _islands(conn, _LAKE_DAYS, {"lake_table": table}) for table in LAKE_TABLES
        }
        with self._lock:
            self._coverage = (generation, coverage)
        log.debug("lake coverage reloaded at catalog_seq %d", generation)
        return coverage

    def load(
        self, conn: psycopg.Connection | None, users: Sequence[int], first: date, last: date
    ) -> Catalog:
        """The catalog for these users and days; `conn` None: the warm store is unreachable."""
        if conn is None:
            cached = self._coverage
            coverage = cached[1] if cached else {t: Coverage() for t in LAKE_TABLES}
            return self._catalog(coverage, Coverage(), Coverage(), warm_available=False)
        coverage = self._lake_coverage(conn)
        recent = {"users": list(users), "first": first, "last": last}
        unsynced = _islands(conn, _UNSYNCED, recent)
        stale = _islands(conn, _STALE, recent)
        # Versions pinned after reading lake_days: every verified day's commit is included.
        return self._catalog(coverage, unsynced, stale, warm_available=True)

    def _catalog(
        self,
        coverage: dict[str, Coverage],
        unsynced: Coverage,
        stale: Coverage,
        warm_available: bool,
    ) -> Catalog:
        versions = {table: self.lake.version(table) for table in LAKE_TABLES}
        return Catalog(coverage, unsynced, stale, versions, self._list_files, warm_available)
