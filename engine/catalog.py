"""The catalog snapshot the planner reads: where each (user, day) may be served from.

Loading it is the only I/O of planning. Coverage is kept as day ranges ("islands") and
cached per catalog generation (day_change_seq, catalog_seq), so a request whose data did not
change costs one tiny query; when the warm store is down the last snapshot still plans
lake-only spans.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

import psycopg

from engine.plan import DayRange
from lake import Lake, LakeFile

log = logging.getLogger(__name__)

ListFiles = Callable[[str, Sequence[int], datetime, datetime, int | None], tuple[LakeFile, ...]]


@dataclass(frozen=True)
class Coverage:
    """Day ranges per user; inclusive, sorted, disjoint."""

    ranges: Mapping[int, tuple[DayRange, ...]] = field(default_factory=dict)

    def of(self, user_id: int) -> tuple[DayRange, ...]:
        return self.ranges.get(user_id, ())

    def contains(self, user_id: int, day: date) -> bool:
        ranges = self.of(user_id)
        i = bisect.bisect_right(ranges, (day, date.max)) - 1
        return i >= 0 and ranges[i][0] <= day <= ranges[i][1]


@dataclass(frozen=True)
class Catalog:
    lake_days: Mapping[str, Coverage]  # lake tier -> days served from the lake
    stale_rollups: Coverage  # days whose rollups lag raw (refresh pending)
    lake_versions: Mapping[str, int | None]  # the pinned version per lake tier
    list_files: ListFiles  # exact files of a pinned version
    warm_available: bool = True
    generation: tuple[int, int] = (0, 0)


_ISLANDS = """
SELECT user_id, min(day), max(day) FROM (
    SELECT user_id, day, day - (row_number() OVER (PARTITION BY user_id ORDER BY day))::int AS grp
    FROM ({days}) AS d
) AS numbered
GROUP BY user_id, grp
ORDER BY user_id, 2
"""
_LAKE_DAYS = (
    "SELECT l.user_id, l.day FROM lake_days l JOIN day_state s "
    "ON s.user_id = l.user_id AND s.day = l.day "
    "WHERE l.tier = %(tier)s AND l.change_seq = s.change_seq"
)
_STALE_DAYS = "SELECT user_id, day FROM day_state WHERE change_seq > refreshed_seq"
_GENERATION = "SELECT (SELECT last_value FROM day_change_seq), (SELECT last_value FROM catalog_seq)"


def _islands(conn: psycopg.Connection, days_sql: str, params: dict[str, str]) -> Coverage:
    ranges: dict[int, list[DayRange]] = {}
    for user_id, first, last in conn.execute(_ISLANDS.format(days=days_sql).encode(), params):
        ranges.setdefault(user_id, []).append((first, last))
    return Coverage({u: tuple(r) for u, r in ranges.items()})


class CatalogSource:
    """Loads catalog snapshots, reusing the last one while the generation is unchanged."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self._lock = threading.Lock()
        self._cached: Catalog | None = None

    def _list_files(
        self, tier: str, users: Sequence[int], start: datetime, end: datetime, version: int | None
    ) -> tuple[LakeFile, ...]:
        return self.lake.files(tier, users, start, end, version).files

    def load(self, conn: psycopg.Connection | None) -> Catalog:
        """A fresh-enough snapshot; `conn` None means the warm store is unreachable."""
        if conn is None:
            return self._offline()
        row = conn.execute(_GENERATION).fetchone()
        generation = (int(row[0]), int(row[1])) if row else (0, 0)
        cached = self._cached
        if cached is not None and cached.generation == generation:
            # Lake versions may move without the generation (a sync before it records);
            # re-pinning the latest is safe: unverified days are not in lake_days.
            return self._repinned(cached)
        lake_days = {tier: _islands(conn, _LAKE_DAYS, {"tier": tier}) for tier in _LAKE_TIERS}
        stale = _islands(conn, _STALE_DAYS, {})
        # Pin versions after reading lake_days: every verified day's commit is then included.
        catalog = Catalog(
            lake_days=lake_days,
            stale_rollups=stale,
            lake_versions={tier: self.lake.version(tier) for tier in _LAKE_TIERS},
            list_files=self._list_files,
            generation=generation,
        )
        with self._lock:
            self._cached = catalog
        log.debug("catalog reloaded at generation %s", generation)
        return catalog

    def _repinned(self, cached: Catalog) -> Catalog:
        versions = {tier: self.lake.version(tier) for tier in _LAKE_TIERS}
        if versions == cached.lake_versions:
            return cached
        return Catalog(
            cached.lake_days, cached.stale_rollups, versions, cached.list_files,
            generation=cached.generation,
        )  # fmt: skip

    def _offline(self) -> Catalog:
        cached = self._cached
        if cached is None:
            empty = {tier: Coverage() for tier in _LAKE_TIERS}
            return Catalog(empty, Coverage(), dict.fromkeys(_LAKE_TIERS), self._list_files,
                           warm_available=False)  # fmt: skip
        return Catalog(
            cached.lake_days, cached.stale_rollups, cached.lake_versions, cached.list_files,
            warm_available=False, generation=cached.generation,
        )  # fmt: skip


_LAKE_TIERS = ("raw", "agg_1m", "agg_1h", "agg_1d")
