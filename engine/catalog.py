"""The catalog snapshot the planner reads: where each (user, day) may be served from.

Loading it is the only I/O of planning. Two parts, with different freshness rules:
- lake coverage (verified days per lake table) is cached per catalog_seq, which every job
  that changes it bumps. A stale cache can only be too small (a day just synced is still
  read from the warm store), never too big: lake days only become unusable by a write.
- the days written since their last sync or refresh are read fresh for every query (small,
  partial-indexed sets). They override lake coverage, so late data is never served stale,
  whatever the cache holds and however transactions interleave.
When the warm store is down, the last lake coverage still plans lake-only spans.

Lake days that must not be served from the lake although lake_days lists them (issue 11):
those recorded in lake_damage, those verified at a Delta version newer than the one this
process can read (the log lost commits), and those this process found damaged itself. With
the days whose raw and 1m rows were tiered out of the warm store, the planner decides whether
the warm store answers for them or the request gets 503 lake_damaged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Protocol

import psycopg

from engine.plan import DayRange
from engine.tiers import LAKE_TABLES
from engine.timings import StageTimes
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
    unservable: Mapping[str, Coverage] = field(default_factory=dict)  # per lake table
    tiered: Coverage = field(default_factory=Coverage)  # raw and 1m gone from the warm store


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
# What every query reads fresh, in one statement (one round trip): the catalog generation,
# and as islands per kind and user, the days written since their last sync ('unsynced') and
# those whose rollups lag raw ('stale').
_FRESH = """
SELECT 'generation' AS kind, NULL::int, NULL::date, NULL::date, last_value FROM catalog_seq
UNION ALL
SELECT kind, user_id, min(day), max(day), NULL FROM (
    SELECT kind, user_id, day,
        day - (row_number() OVER (PARTITION BY kind, user_id ORDER BY day))::int AS grp
    FROM (
        SELECT 'unsynced' AS kind, user_id, day FROM day_state
        WHERE change_seq > synced_seq
        AND user_id = ANY(%(users)s) AND day BETWEEN %(first)s AND %(last)s
        UNION ALL
        SELECT 'stale', user_id, day FROM day_state
        WHERE change_seq > refreshed_seq
        AND user_id = ANY(%(users)s) AND day BETWEEN %(first)s AND %(last)s
    ) AS d
) AS numbered
GROUP BY kind, user_id, grp
ORDER BY 1, 2, 3
"""
_DAMAGED = "SELECT user_id, day FROM lake_damage WHERE tier = %(lake_table)s"
_TIERED = "SELECT user_id, day FROM day_state WHERE tiered_seq IS NOT NULL"
# Verified at a version this process's view of the table does not reach: the log lost commits.
_AHEAD = (
    "SELECT user_id, day FROM current_lake_days "
    "WHERE tier = %(lake_table)s AND lake_version > %(version)s"
)


def union(*coverages: Coverage) -> Coverage:
    """Days in any of the coverages, as sorted, disjoint, non-adjacent ranges."""
    ranges: dict[int, list[DayRange]] = {}
    for coverage in coverages:
        for user_id, spans in coverage.ranges.items():
            ranges.setdefault(user_id, []).extend(spans)
    merged: dict[int, tuple[DayRange, ...]] = {}
    for user_id, listed in ranges.items():
        out: list[DayRange] = []
        for first, last in sorted(listed):
            if out and first <= out[-1][1] + timedelta(days=1):
                out[-1] = (out[-1][0], max(out[-1][1], last))
            else:
                out.append((first, last))
        merged[user_id] = tuple(out)
    return Coverage(merged)


def from_days(days: Iterable[tuple[int, date]]) -> Coverage:
    return union(Coverage({}), *(Coverage({u: ((d, d),)}) for u, d in days))


class Executes(Protocol):
    def execute(self, query: Any, params: Any = None) -> Any: ...


def _islands(conn: Executes, days_sql: str, params: dict[str, object]) -> Coverage:
    ranges: dict[int, list[DayRange]] = {}
    for user_id, first, last in conn.execute(_ISLANDS.format(days=days_sql).encode(), params):
        ranges.setdefault(user_id, []).append((first, last))
    return Coverage({u: tuple(r) for u, r in ranges.items()})


def _fresh(
    conn: Executes, users: Sequence[int], first: date, last: date
) -> tuple[int, Coverage, Coverage]:
    """The catalog generation, the unsynced days and the stale-rollup days: one statement."""
    params = {"users": list(users), "first": first, "last": last}
    generation = 0
    ranges: dict[str, dict[int, list[DayRange]]] = {"unsynced": {}, "stale": {}}
    for kind, user_id, first_day, last_day, value in conn.execute(_FRESH.encode(), params):
        if kind == "generation":
            generation = int(value)
        else:
            ranges[kind].setdefault(user_id, []).append((first_day, last_day))
    unsynced, stale = (
        Coverage({u: tuple(r) for u, r in ranges[kind].items()}) for kind in ("unsynced", "stale")
    )
    return generation, unsynced, stale


class _Counted:
    """A connection's `execute`, counting the statements sent (for the stage timings)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.count = 0

    def execute(self, query: Any, params: Any = None) -> Any:
        self.count += 1
        return self.conn.execute(query, params)


class CatalogSource:
    """Loads catalog snapshots; lake coverage is reused while catalog_seq is unchanged."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self._lock = threading.Lock()
        self._coverage: tuple[int, dict[str, Coverage]] | None = None
        # lake_damage per lake table and the tiered days, cached with the coverage.
        self._damage: tuple[dict[str, Coverage], Coverage] = ({}, Coverage())
        # Days verified at versions the log does not reach, per (generation, versions).
        self._ahead: tuple[tuple[int, tuple[int | None, ...]], dict[str, Coverage]] | None = None
        self._found: dict[str, set[tuple[int, date]]] = {}  # damage this process found

    def mark_damaged(self, lake_table: str, days: Iterable[tuple[int, date]]) -> None:
        """Days this process found damaged: never served from the lake again by it."""
        with self._lock:
            self._found.setdefault(lake_table, set()).update(days)

    def found_damage(self) -> dict[str, set[tuple[int, date]]]:
        with self._lock:
            return {table: set(days) for table, days in self._found.items()}

    def _list_files(
        self,
        lake_table: str,
        users: Sequence[int],
        start: datetime,
        end: datetime,
        version: int | None,
    ) -> tuple[LakeFile, ...]:
        return self.lake.files(lake_table, users, start, end, version).files

    def _lake_coverage(self, conn: Executes, generation: int) -> dict[str, Coverage]:
        cached = self._coverage
        if cached is not None and cached[0] == generation:
            return cached[1]
        coverage = {
            table: _islands(conn, _LAKE_DAYS, {"lake_table": table}) for table in LAKE_TABLES
        }
        damage = {table: _islands(conn, _DAMAGED, {"lake_table": table}) for table in LAKE_TABLES}
        tiered = _islands(conn, _TIERED, {})
        with self._lock:
            self._coverage = (generation, coverage)
            self._damage = (damage, tiered)
        log.debug("lake coverage reloaded at catalog_seq %d", generation)
        return coverage

    def _days_ahead(
        self, conn: Executes, versions: Mapping[str, int | None]
    ) -> dict[str, Coverage]:
        cached_coverage = self._coverage
        key = (cached_coverage[0] if cached_coverage else -1, tuple(versions.values()))
        cached = self._ahead
        if cached is not None and cached[0] == key:
            return cached[1]
        ahead = {}
        for table, version in versions.items():
            params = {"lake_table": table, "version": -1 if version is None else version}
            ahead[table] = _islands(conn, _AHEAD, params)
            if ahead[table].ranges:
                log.error(
                    "lake table %s is at version %s but days were verified at later versions: "
                    "its log lost commits; those days are not served from the lake",
                    table,
                    version,
                )
        with self._lock:
            self._ahead = (key, ahead)
        return ahead

    def load(
        self,
        conn: psycopg.Connection | None,
        users: Sequence[int],
        first: date,
        last: date,
        times: StageTimes | None = None,
    ) -> Catalog:
        """The catalog for these users and days; `conn` None: the warm store is unreachable.

        One statement while the lake coverage is cached (the generation is read with the
        fresh days); a dozen more when a job changed the coverage since."""
        if conn is None:
            cached = self._coverage
            coverage = cached[1] if cached else {t: Coverage() for t in LAKE_TABLES}
            versions = self._versions()
            ahead = self._ahead[1] if self._ahead else {}
            return self._catalog(
                coverage, Coverage(), Coverage(), versions, ahead, warm_available=False
            )
        statements = _Counted(conn)
        # The fresh days are read before the coverage they override. A coverage reloaded
        # just after is at least as new as the generation it is cached under (a newer one
        # reloads next time), and days written in between are only newer than this query.
        generation, unsynced, stale = _fresh(statements, users, first, last)
        coverage = self._lake_coverage(statements, generation)
        # Versions pinned after reading lake_days: every verified day's commit is included.
        versions = self._versions()
        ahead = self._days_ahead(statements, versions)
        if times is not None:
            times.count("warm_statements", statements.count)
        return self._catalog(coverage, unsynced, stale, versions, ahead, warm_available=True)

    def _versions(self) -> dict[str, int | None]:
        return {table: self.lake.version(table) for table in LAKE_TABLES}

    def _catalog(
        self,
        coverage: dict[str, Coverage],
        unsynced: Coverage,
        stale: Coverage,
        versions: dict[str, int | None],
        ahead: Mapping[str, Coverage],
        warm_available: bool,
    ) -> Catalog:
        damage, tiered = self._damage
        found = self.found_damage()
        unservable = {
            table: union(
                damage.get(table, Coverage()),
                ahead.get(table, Coverage()),
                from_days(found.get(table, ())),
            )
            for table in LAKE_TABLES
        }
        return Catalog(
            coverage,
            unsynced,
            stale,
            versions,
            self._list_files,
            warm_available,
            unservable,
            tiered,
        )
