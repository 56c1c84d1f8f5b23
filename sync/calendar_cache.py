"""Keeping the calendar cache bounded (engine/calendarcache.py fills it on read, and
engine/calendarprefill.py each night).

Entries never go wrong (each carries the change numbers of the days it was computed from),
but they go unused: an interval a zone-history edit no longer asks, or one whose days were
written since and not asked again. Pruning keeps the configured number of rows
(STRATUM_CALENDAR_CACHE_ROWS): it drops entries filled on demand first, oldest first, and
the nightly prefill's entries last, so what the night computed for the first answers of the
day stays. A prefilled entry it drops marks its days for the next prefill again
(day_state.prefilled_seq: a fresh negative number, see migration 011), so the prefill's
record of what is done stays true; a budget smaller than the prefilled days then costs the
next prefill what was dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

_PRUNE = """
WITH old AS (
    SELECT user_id, metric, start_ts, end_ts FROM calendar_cache
    ORDER BY prefilled DESC, filled_at DESC OFFSET %(kept)s
), dropped AS (
    DELETE FROM calendar_cache c USING old
    WHERE c.user_id = old.user_id AND c.metric = old.metric
    AND c.start_ts = old.start_ts AND c.end_ts = old.end_ts
    RETURNING c.user_id, c.start_ts, c.end_ts, c.prefilled
), unfilled AS (
    UPDATE day_state d SET prefilled_seq = -nextval('day_change_seq')
    FROM (
        SELECT DISTINCT user_id, day::date AS day
        FROM dropped, generate_series(
            (start_ts AT TIME ZONE 'UTC')::date,
            ((end_ts - interval '1 microsecond') AT TIME ZONE 'UTC')::date,
            interval '1 day'
        ) AS day
        WHERE prefilled
    ) p
    WHERE d.user_id = p.user_id AND d.day = p.day
    RETURNING 1
)
SELECT (SELECT count(*) FROM dropped), (SELECT count(*) FROM dropped WHERE prefilled),
    (SELECT count(*) FROM unfilled)
"""


@dataclass(frozen=True)
class Pruned:
    dropped: int  # entries
    prefilled: int  # of them, the nightly prefill's
    days_unfilled: int  # (participant, day) pairs marked for the next prefill again


def prune_calendar_cache(url: str, max_rows: int) -> Pruned:
    """Drop all but `max_rows` entries (0: every entry): on-demand fills first, oldest first,
    then prefilled ones, oldest first."""
    with psycopg.connect(url) as conn:
        row = conn.execute(_PRUNE, {"kept": max_rows}).fetchone()
        assert row is not None
        return Pruned(int(row[0]), int(row[1]), int(row[2]))
