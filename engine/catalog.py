"""The catalog snapshot the planner reads: where each (user, day) may be served from.

Loading it is the only I/O of planning, and it follows the question, not the lake:
- each participant's lake coverage (verified days per lake table), damaged days and tiered
  days are cached per participant. Triggers record every change to them in catalog_changes
  with the writing transaction's id (sync/migrations/008); a query reloads only the
  participants it asks for that are not cached yet or have a change their entry may not
  have seen, so a sync of one participant's day costs a query for another nothing. A stale
  entry can only be too small in coverage (a day just synced is still read from the warm
  store), never too big: lake days only become unusable by a write, which the next point
  catches, or by damage, tiering or a lost commit, which are recorded changes.
- the days written since their last sync or refresh are read fresh for every query (small,
  partial-indexed sets), in the same statement that finds the changed participants. They
  override lake coverage, so late data is never served stale, whatever the cache holds and
  however transactions interleave.
When the warm store is down, the cached participants (all of them after `preload`) still
plan lake-only spans.

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
# What every query reads fresh, in one statement (one round trip): the xmin of its snapshot
# (the horizon participants loaded now are cached under), which of the cached participants
# asked have a catalog change their cached entry may not have seen (catalog_changes,
# sync/migrations/008, or loaded below the floor of pruned changes, 009), and as islands per
# kind and user, the days written since their last sync ('unsynced') and those whose rollups
# lag raw ('stale').
# A participant's catalog entry cached under `horizon` may be out of date: a catalog change
# committed at or after it, or the entry was loaded below the floor of pruned changes (their
# records may be gone). `user_id` and `horizon` name SQL expressions of the caller's query.
_ENTRY_OUTDATED = (
    "{horizon} < (SELECT below FROM catalog_changes_floor) OR EXISTS (SELECT 1 FROM "
    "catalog_changes c WHERE c.user_id = {user_id} AND c.xact_id >= ({horizon}::text)::xid8)"
)
_FRESH = f"""
SELECT 'horizon' AS kind, NULL::int, NULL::date, NULL::date,
       (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint
UNION ALL
SELECT 'changed', p.user_id, NULL, NULL, NULL
FROM unnest(%(cached)s::int[], %(horizons)s::bigint[]) AS p(user_id, horizon)
WHERE {_ENTRY_OUTDATED.format(user_id="p.user_id", horizon="p.horizon")}
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
"""  # noqa: S608 (constants only)
# The cached part of participants' catalogs, as islands per kind, lake table and user: the
# lake days the router may serve (current_lake_days, sync/migrations: verified and unchanged
# since) with the newest Delta version they were verified at, the damaged lake days, and the
# days whose raw and 1m rows were tiered out of the warm store.
_PARTICIPANTS = """
SELECT kind, tier, user_id, min(day), max(day), max(version) FROM (
    SELECT kind, tier, user_id, day, version,
        day - (row_number() OVER (PARTITION BY kind, tier, user_id ORDER BY day))::int AS grp
    FROM (
        SELECT 'lake' AS kind, c.tier, c.user_id, c.day, c.lake_version AS version
        FROM {lake}
        UNION ALL
        SELECT 'damaged', d.tier, d.user_id, d.day, NULL FROM {damage}
        UNION ALL
        SELECT 'tiered', '', s.user_id, s.day, NULL FROM {tiered} WHERE s.tiered_seq IS NOT NULL
    ) AS d
) AS numbered
GROUP BY kind, tier, user_id, grp
ORDER BY 1, 2, 3, 4
"""
# Joined on an equality with each participant asked (not `user_id = ANY(...)`), so that the
# view's join reads day_state by its key for them instead of scanning it.
_ASKED = "unnest(%(users)s::int[]) AS p(user_id) JOIN {table} ON {alias}.user_id = p.user_id"
_SOURCES = {
    "lake": ("current_lake_days", "c"),
    "damage": ("lake_damage", "d"),
    "tiered": ("day_state", "s"),
}


def _participants_sql(everyone: bool) -> str:
    return _PARTICIPANTS.format(
        **{
            name: f"{table} {alias}"
            if everyone
            else _ASKED.format(table=f"{table} {alias}", alias=alias)
            for name, (table, alias) in _SOURCES.items()
        }
    )


# Verified at a version this process's view of the table does not reach: the log lost commits.
_AHEAD = (
    "SELECT user_id, day FROM current_lake_days "
    "WHERE tier = %(lake_table)s AND lake_version > %(version)s AND user_id = ANY(%(users)s)"
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


class _Counted:
    """A connection's `execute`, counting the statements sent (for the stage timings)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.count = 0

    def execute(self, query: Any, params: Any = None) -> Any:
        self.count += 1
        return self.conn.execute(query, params)


@dataclass(frozen=True)
class Participant:
    """One participant's cached catalog: what changes only when catalog_changes says so."""

    lake: Mapping[str, tuple[DayRange, ...]]  # lake table -> verified days
    newest: Mapping[str, int]  # lake table -> newest Delta version a day was verified at
    damaged: Mapping[str, tuple[DayRange, ...]]  # lake table -> lake_damage days
    tiered: tuple[DayRange, ...]  # raw and 1m gone from the warm store
    horizon: int  # xmin of a snapshot taken before loading it: changes below it are in


EMPTY = Participant({}, {}, {}, (), -1)


@dataclass(frozen=True)
class _Fresh:
    horizon: int
    changed: set[int]  # cached participants asked whose entry may be out of date
    unsynced: Coverage
    stale: Coverage


def _fresh(
    conn: Executes,
    users: Sequence[int],
    first: date,
    last: date,
    cached: Mapping[int, Participant],
) -> _Fresh:
    """The snapshot's xmin, the cached participants that changed since their entry, the
    unsynced days and the stale-rollup days: one statement."""
    params = {
        "users": list(users),
        "first": first,
        "last": last,
        "cached": list(cached),
        "horizons": [entry.horizon for entry in cached.values()],
    }
    horizon = 0
    changed: set[int] = set()
    ranges: dict[str, dict[int, list[DayRange]]] = {"unsynced": {}, "stale": {}}
    for kind, user_id, first_day, last_day, value in conn.execute(_FRESH.encode(), params):
        if kind == "horizon":
            horizon = int(value)
        elif kind == "changed":
            changed.add(int(user_id))
        else:
            ranges[kind].setdefault(user_id, []).append((first_day, last_day))
    unsynced, stale = (
        Coverage({u: tuple(r) for u, r in ranges[kind].items()}) for kind in ("unsynced", "stale")
    )
    return _Fresh(horizon, changed, unsynced, stale)


def _load_participants(
    conn: _Counted, users: Sequence[int] | None, horizon: int
) -> dict[int, Participant]:
    """The cached part of these participants' catalogs (None: every participant the catalog
    holds), to be cached under `horizon`. Each participant asked gets an entry, empty ones
    too, so that it is not loaded again until it changes."""
    lake: dict[int, dict[str, list[DayRange]]] = {}
    newest: dict[int, dict[str, int]] = {}
    damaged: dict[int, dict[str, list[DayRange]]] = {}
    tiered: dict[int, list[DayRange]] = {}
    sql = _participants_sql(everyone=users is None)
    params = {} if users is None else {"users": list(users)}
    with conn.conn.transaction():
        # A few thousand rows read by their keys: parallel workers would cost more to start
        # (~40 ms measured at cohort scale) than the whole read.
        conn.execute(b"SET LOCAL max_parallel_workers_per_gather = 0")
        found = conn.execute(sql.encode(), params).fetchall()
    for kind, table, user_id, first, last, version in found:
        if kind == "lake":
            lake.setdefault(user_id, {}).setdefault(table, []).append((first, last))
            known = newest.setdefault(user_id, {})
            known[table] = max(known.get(table, -1), int(version))
        elif kind == "damaged":
            damaged.setdefault(user_id, {}).setdefault(table, []).append((first, last))
        else:
            tiered.setdefault(user_id, []).append((first, last))
    everyone = set(lake) | set(damaged) | set(tiered) if users is None else set(users)
    return {
        user_id: Participant(
            {t: tuple(r) for t, r in lake.get(user_id, {}).items()},
            newest.get(user_id, {}),
            {t: tuple(r) for t, r in damaged.get(user_id, {}).items()},
            tuple(tiered.get(user_id, ())),
            horizon,
        )
        for user_id in everyone
    }


class CatalogSource:
    """Loads catalog snapshots. Each participant's lake coverage, damage and tiered days are
    cached and reloaded only when catalog_changes records a change for them that their entry
    may not have seen: a query loads the participants it asks for, not the cohort."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self._lock = threading.Lock()
        self._participants: dict[int, Participant] = {}
        # Days verified at versions the log does not reach, per (user, lake table, version
        # read), valid while the participant's entry is the one they were computed for.
        self._ahead: dict[tuple[int, str, int], tuple[Participant, tuple[DayRange, ...]]] = {}
        self._found: dict[str, set[tuple[int, date]]] = {}  # damage this process found
        self.loads = 0  # participants loaded from the warm store (a test and bench figure)

    def mark_damaged(self, lake_table: str, days: Iterable[tuple[int, date]]) -> None:
        """Days this process found damaged: never served from the lake again by it."""
        with self._lock:
            self._found.setdefault(lake_table, set()).update(days)

    def found_damage(self) -> dict[str, set[tuple[int, date]]]:
        with self._lock:
            return {table: set(days) for table, days in self._found.items()}

    def cached(self, user_id: int) -> Participant | None:
        return self._participants.get(user_id)

    def _list_files(
        self,
        lake_table: str,
        users: Sequence[int],
        start: datetime,
        end: datetime,
        version: int | None,
    ) -> tuple[LakeFile, ...]:
        return self.lake.files(lake_table, users, start, end, version).files

    def _remember(self, loaded: Mapping[int, Participant]) -> None:
        with self._lock:
            for user_id, entry in loaded.items():
                known = self._participants.get(user_id)
                # A slower load under an older horizon must not replace a newer entry.
                if known is None or known.horizon <= entry.horizon:
                    self._participants[user_id] = entry
            self.loads += len(loaded)

    def preload(self, conn: psycopg.Connection) -> int:
        """Load every participant the catalog holds (at start-up: lake-only spans stay
        planned if the warm store goes down later); the number loaded."""
        statements = _Counted(conn)
        fresh = _fresh(statements, (), date(1970, 1, 1), date(1970, 1, 1), {})
        loaded = _load_participants(statements, None, fresh.horizon)
        self._remember(loaded)
        log.debug("catalog of %d participants loaded", len(loaded))
        return len(loaded)

    def _entries(
        self, conn: _Counted, users: Sequence[int], first: date, last: date
    ) -> tuple[dict[int, Participant], _Fresh]:
        with self._lock:
            cached = {u: self._participants[u] for u in users if u in self._participants}
        # The fresh days and the changed participants are read before what they override or
        # invalidate: an entry loaded just after is at least as new as the horizon it is
        # cached under, and a change it misses has a transaction id at or above it.
        fresh = _fresh(conn, users, first, last, cached)
        wanted = sorted((set(users) - set(cached)) | fresh.changed)
        if wanted:
            loaded = _load_participants(conn, wanted, fresh.horizon)
            self._remember(loaded)
            cached.update(loaded)
            log.debug("catalog of participants %s (re)loaded", wanted)
        return cached, fresh

    def _days_ahead(
        self,
        conn: Executes | None,
        entries: Mapping[int, Participant],
        versions: Mapping[str, int | None],
    ) -> dict[str, Coverage]:
        """Days of these participants verified at a version newer than this process reads
        (the log lost commits, or the table is gone): normally none, found without I/O."""
        ahead: dict[str, dict[int, tuple[DayRange, ...]]] = {}
        for table, version in versions.items():
            read = -1 if version is None else version
            behind = [u for u, e in entries.items() if e.newest.get(table, -1) > read]
            if not behind:
                continue
            missing = []
            for user_id in behind:
                known = self._ahead.get((user_id, table, read))
                if known is not None and known[0] is entries[user_id]:
                    ahead.setdefault(table, {})[user_id] = known[1]
                else:
                    missing.append(user_id)
            if missing and conn is not None:
                params = {"lake_table": table, "version": read, "users": missing}
                found = _islands(conn, _AHEAD, params)
                with self._lock:
                    for user_id in missing:
                        days = found.of(user_id)
                        self._ahead[(user_id, table, read)] = (entries[user_id], days)
                        ahead.setdefault(table, {})[user_id] = days
                log.error(
                    "lake table %s is at version %s but days of participants %s were verified "
                    "at later versions: its log lost commits; those days are not served from "
                    "the lake",
                    table,
                    version,
                    missing,
                )
        return {table: Coverage(ranges) for table, ranges in ahead.items()}

    def load(
        self,
        conn: psycopg.Connection | None,
        users: Sequence[int],
        first: date,
        last: date,
        times: StageTimes | None = None,
    ) -> Catalog:
        """The catalog for these users and days; `conn` None: the warm store is unreachable.

        One statement while the participants asked are cached and unchanged; one more to
        load those that are not."""
        if conn is None:
            with self._lock:
                entries = {u: self._participants.get(u, EMPTY) for u in users}
            versions = self._versions()
            ahead = self._days_ahead(None, entries, versions)
            return self._catalog(
                entries, Coverage(), Coverage(), versions, ahead, warm_available=False
            )
        statements = _Counted(conn)
        entries, fresh = self._entries(statements, users, first, last)
        # Versions pinned after reading lake_days: every verified day's commit is included.
        versions = self._versions()
        ahead = self._days_ahead(statements, entries, versions)
        if times is not None:
            times.count("warm_statements", statements.count)
        return self._catalog(
            entries, fresh.unsynced, fresh.stale, versions, ahead, warm_available=True
        )

    def guess(self, users: Sequence[int]) -> Catalog | None:
        """What `load` would return if the warm store has nothing new for these participants
        (their cached entries, no days written since their last sync, no stale rollups), or
        None when one of them is not cached. No I/O: a plan from it is a guess that `load`'s
        must confirm (engine/run.py starts a lake scan on it meanwhile)."""
        with self._lock:
            entries = {u: self._participants.get(u) for u in users}
        known = {u: e for u, e in entries.items() if e is not None}
        if len(known) < len(entries):
            return None
        versions = self._versions()
        ahead = self._days_ahead(None, known, versions)
        return self._catalog(known, Coverage(), Coverage(), versions, ahead, warm_available=True)

    def _versions(self) -> dict[str, int | None]:
        return {table: self.lake.version(table) for table in LAKE_TABLES}

    def _catalog(
        self,
        entries: Mapping[int, Participant],
        unsynced: Coverage,
        stale: Coverage,
        versions: dict[str, int | None],
        ahead: Mapping[str, Coverage],
        warm_available: bool,
    ) -> Catalog:
        found = self.found_damage()
        coverage = {
            table: Coverage({u: e.lake[table] for u, e in entries.items() if table in e.lake})
            for table in LAKE_TABLES
        }
        unservable = {
            table: union(
                Coverage({u: e.damaged[table] for u, e in entries.items() if table in e.damaged}),
                ahead.get(table, Coverage()),
                from_days((u, d) for u, d in found.get(table, ()) if u in entries),
            )
            for table in LAKE_TABLES
        }
        tiered = Coverage({u: e.tiered for u, e in entries.items() if e.tiered})
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
