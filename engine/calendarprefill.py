"""The nightly prefill of the calendar cache: the first calendar answer of the day reads it.

After the nightly sync, the local days (tz=local, `1d`, and any zone of
STRATUM_CALENDAR_PREFILL) touching each UTC day written since its last prefill are computed
by the engine's own calendar pipeline (Engine.fill_calendar: the cache read, the misses
computed from the exact tier, the fill), so an answer over them is all hits.

The work follows what changed, not the history (sync/migrations/011): a day is pending while
day_state.change_seq > prefilled_seq (a write, or a zone-history edit from that day on, or
pruning its prefilled entries, marks it). Pending days are grouped into runs of nearby days
per participant, and each run is asked as its own request over the local dates d-1 .. d+1 of
its days (every zone's local day touching a UTC day has one of those dates), so a late row a
year ago costs that day's request, not the year between. The mark records the change number
read before the request, and only over the mark it read: a write landing meanwhile leaves the
day pending, and so does a zone edit or pruning (which set a fresh mark).

Weeks and months are not prefilled: each new day would recompute its whole week's and
month's interval from the rows (the engine caches them as their own intervals, not composed
from days), 7-31 times a day's work every night.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, NamedTuple

import psycopg

from engine.access import LOCAL_ADMIN
from engine.query import DataQuery, build_query
from engine.registry import metric_names

if TYPE_CHECKING:
    from engine.run import Engine

log = logging.getLogger(__name__)

# Days of one request at most (a first prefill covers the whole history: in pieces).
WINDOW_DAYS = 31
# Pending days this close are asked together: their requests' local dates would touch.
NEAR_DAYS = 2

# Rolled-up days only: the nightly refresh runs first, and a day's metrics are read from its
# data_1d rows (kept for every day, tiered or not).
_PENDING = """
SELECT user_id, day, change_seq, prefilled_seq FROM day_state
WHERE change_seq > prefilled_seq AND refreshed_seq = change_seq
ORDER BY user_id, day
"""
_METRICS = """
SELECT DISTINCT p.user_id, m.metric
FROM unnest(%(users)s::int[], %(days)s::date[]) AS p(user_id, day)
CROSS JOIN unnest(%(metrics)s::text[]) AS m(metric)
WHERE EXISTS (
    SELECT 1 FROM data_1d d
    WHERE d.user_id = p.user_id AND d.metric = m.metric
    AND d.ts = p.day::timestamp AT TIME ZONE 'UTC'
)
"""
# Only where prefilled_seq is still what was read: a zone edit or pruning meanwhile set a
# fresh mark this prefill did not compute for (sync/migrations/011).
_MARK = """
UPDATE day_state d SET prefilled_seq = s.seq
FROM unnest(%(users)s::int[], %(days)s::date[], %(seqs)s::bigint[], %(read)s::bigint[])
    AS s(user_id, day, seq, read)
WHERE d.user_id = s.user_id AND d.day = s.day AND d.prefilled_seq = s.read
"""


@dataclass(frozen=True)
class PrefillResult:
    days: int  # (participant, UTC day) pairs recorded as prefilled
    requests: int  # calendar requests asked
    computed: int  # cache entries computed and stored
    hits: int  # entries asked that the cache already held
    seconds: float


class _Day(NamedTuple):
    user_id: int
    day: date
    seq: int  # change_seq: what the prefill records when done
    read: int  # prefilled_seq as read: recorded over only if still this


@dataclass(frozen=True)
class _Run:
    first: date  # UTC days, inclusive
    last: date
    metrics: tuple[str, ...]


def prefill_calendar(engine: Engine, url: str, zones: Sequence[str]) -> PrefillResult:
    """Fill the calendar cache for the days written since their last prefill, in each of
    `zones` ("local" or an IANA name); nothing when `zones` is empty or the cache is off."""
    started = time.perf_counter()
    if not zones or not engine.settings.query.calendar_cache_rows:
        return PrefillResult(0, 0, 0, 0, time.perf_counter() - started)
    with psycopg.connect(url, autocommit=True) as conn:
        pending = [
            _Day(int(u), d, int(seq), int(read))
            for u, d, seq, read in conn.execute(_PENDING).fetchall()
        ]
        metrics = _metrics_of(conn, pending)
        by_user: dict[int, list[_Day]] = defaultdict(list)
        for day in pending:
            by_user[day.user_id].append(day)
        runs = _runs(by_user, metrics)
        requests = computed = hits = days = 0
        for run, users in runs.items():
            for chunk in _chunks(sorted(users), engine.settings.query.max_users):
                if run.metrics:
                    for zone in zones:
                        cache, filled = engine.fill_calendar(_query(engine, chunk, run, zone))
                        requests += 1
                        computed += filled
                        hits += int((cache.get("cache") or {}).get("hits", 0))
                done = [d for u in chunk for d in by_user[u] if run.first <= d.day <= run.last]
                days += conn.execute(
                    _MARK,
                    {
                        "users": [d.user_id for d in done],
                        "days": [d.day for d in done],
                        "seqs": [d.seq for d in done],
                        "read": [d.read for d in done],
                    },
                ).rowcount
        if days:
            # So the first answers do not pay for the night's writes: fresh statistics (a
            # first prefill grows the cache from nothing faster than autovacuum notices), and
            # the new entries' and marked days' row versions settled (hint bits set, dead
            # versions gone). Both tables' visibility maps keep this to the pages written.
            conn.execute("VACUUM (ANALYZE) calendar_cache, day_state")
    result = PrefillResult(days, requests, computed, hits, time.perf_counter() - started)
    log.info("calendar prefill: %s", result)
    return result


def _metrics_of(conn: psycopg.Connection, pending: list[_Day]) -> dict[int, tuple[str, ...]]:
    """Each participant's metrics with rows on one of their pending days."""
    rows = conn.execute(
        _METRICS,
        {
            "users": [d.user_id for d in pending],
            "days": [d.day for d in pending],
            "metrics": metric_names(),
        },
    ).fetchall()
    found: dict[int, set[str]] = defaultdict(set)
    for user_id, metric in rows:
        found[int(user_id)].add(metric)
    return {user_id: tuple(sorted(names)) for user_id, names in found.items()}


def _runs(
    by_user: dict[int, list[_Day]], metrics: dict[int, tuple[str, ...]]
) -> dict[_Run, list[int]]:
    """Participants by run of nearby pending days (at most WINDOW_DAYS long) and metrics:
    after an ordinary night most participants share one run (yesterday), so one request
    serves them all."""
    runs: dict[_Run, list[int]] = defaultdict(list)
    for user_id, pending in by_user.items():
        days = [d.day for d in pending]
        first = last = days[0]
        for day in [*days[1:], None]:
            if (
                day is not None
                and (day - last).days <= NEAR_DAYS
                and (day - first).days < WINDOW_DAYS
            ):
                last = day
                continue
            runs[_Run(first, last, metrics.get(user_id, ()))].append(user_id)
            if day is not None:
                first = last = day
    return runs


def _chunks(users: list[int], size: int) -> list[list[int]]:
    return [users[i : i + size] for i in range(0, len(users), size)]


def _query(engine: Engine, users: list[int], run: _Run, zone: str) -> DataQuery:
    """The local days, in `zone`, touching the run's UTC days: local dates d-1 .. d+1."""
    day = timedelta(days=1)
    params = {
        "user_id": [",".join(map(str, users))],
        "metric": [",".join(run.metrics)],
        "resolution": ["1d"],
        "tz": [zone],
        "start": [(run.first - day).isoformat()],
        "end": [(run.last + 2 * day).isoformat()],  # exclusive
        "page_size": ["0"],
    }
    return build_query(params, engine.settings.query, principal=LOCAL_ADMIN)


def mark_all_pending(url: str) -> int:
    """Mark every day for the next prefill (after a zone is added to the setting); how many."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "UPDATE day_state SET prefilled_seq = 0 WHERE prefilled_seq <> 0"
        ).rowcount
