"""Keeping the calendar cache bounded (engine/calendarcache.py fills it on read).

Entries never go wrong (each carries the change numbers of the days it was computed from),
but they go unused: an interval a zone-history edit no longer asks, or one whose days were
written since and not asked again. Pruning drops the oldest fills beyond the configured
number of rows (STRATUM_CALENDAR_CACHE_ROWS); what is asked again is computed again.
"""

from __future__ import annotations

import psycopg

_PRUNE = """
DELETE FROM calendar_cache c USING (
    SELECT user_id, metric, start_ts, end_ts FROM calendar_cache
    ORDER BY filled_at DESC OFFSET %s
) AS old
WHERE c.user_id = old.user_id AND c.metric = old.metric
AND c.start_ts = old.start_ts AND c.end_ts = old.end_ts
"""


def prune_calendar_cache(url: str, max_rows: int) -> int:
    """Drop all but the `max_rows` newest fills (0: every entry); the number dropped."""
    with psycopg.connect(url) as conn:
        return conn.execute(_PRUNE, (max_rows,)).rowcount
