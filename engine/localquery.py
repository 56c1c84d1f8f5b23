"""A calendar request (local days, weeks, months) as an ordinary query and its buckets.

The participants' zones are resolved into UTC intervals per bucket here, in Python
(zoneinfo); the ordinary pipeline then reads the coarsest tier exact for those intervals
over the UTC span that holds them (so lake partitions d-1 .. d+1 of the local dates are
read, and fresh days and the lake/warm seam are handled as for any UTC answer), and
engine.rebucket sums its rows into the buckets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.calendar import Bucket, buckets
from engine.paging import cut_page
from engine.query import LOCAL, DataQuery, describe, from_us
from engine.rebucket import BucketTable, exact_tier
from engine.tiers import Resolution
from engine.zones import History, Period, periods

# Zone periods are resolved this much beyond the span, so no bucket that can be selected
# (a month at most) is cut by the resolution window rather than by a zone change.
MARGIN = timedelta(days=32)


@dataclass(frozen=True)
class CalendarWork:
    query: DataQuery  # the request
    inner: DataQuery | None  # the finer query whose rows fill the buckets (None: no bucket)
    table: BucketTable
    tier: Resolution
    zones: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        return {
            "query": describe(self.query),
            "bucket": self.query.calendar,
            "tz": self.query.tz,
            "zones": list(self.zones),
            "tier": self.tier,
            "buckets": self.table.count,
        }


def prepare(query: DataQuery, histories: Mapping[int, History], default_tz: str) -> CalendarWork:
    """The buckets of each participant, the tier exact for all of them, and the query."""
    assert query.calendar is not None
    window = (query.start - MARGIN, query.end + MARGIN)
    per_user: dict[int, list[Bucket]] = {}
    # Participants with the same zones share one list (and its conversion to arrays).
    shared: dict[tuple[Period, ...], list[Bucket]] = {}
    for user_id in query.users:
        history, fallback = (histories.get(user_id, ()), default_tz)
        if query.tz != LOCAL:
            history, fallback = (), query.tz
        zone_periods = tuple(periods(history, fallback, *window))
        if zone_periods not in shared:
            shared[zone_periods] = buckets(
                list(zone_periods),
                query.calendar,
                since=query.start,
                until=query.end,
                first_date=query.local_start,
                end_date=query.local_end,
            )
        per_user[user_id] = shared[zone_periods]
    table = BucketTable(per_user)
    selected = [b for listed in shared.values() for b in listed]  # each list once
    zones = tuple(sorted({b.tz for b in selected}))
    if not selected:
        return CalendarWork(query, None, table, "1d", zones)
    tier = exact_tier(instant for b in selected for instant in (b.start, b.end))
    inner = DataQuery(
        users=query.users,
        metrics=query.metrics,
        start=min(b.start for b in selected),
        end=max(b.end for b in selected),
        resolution=tier,
        requested_resolution=tier,
        max_points=query.max_points,
        page_size=0,
        page_number=1,
        principal=query.principal,
        cursor_secret=query.cursor_secret,
    )
    return CalendarWork(query, inner, table, tier, zones)


def page(query: DataQuery, answer: pa.Table) -> tuple[pa.Table, bool, str | None]:
    """(rows of this page, has_more, next cursor) of a whole calendar answer."""
    if query.after is not None:
        after = query.after
        users = answer.column("user_id")
        metrics = answer.column("metric")
        ts = answer.column("ts")
        at = pa.scalar(from_us(after.ts_us), ts.type)
        same_user = pc.equal(users, after.user_id)
        same_metric = pc.and_(same_user, pc.equal(metrics, after.metric))
        later = pc.or_(
            pc.greater(users, after.user_id),
            pc.or_(
                pc.and_(same_user, pc.greater(metrics, after.metric)),
                pc.and_(same_metric, pc.greater(ts, at)),
            ),
        )
        answer = answer.filter(later)
    answer = answer.slice(min(query.offset, answer.num_rows))
    if query.page_size == 0:
        return answer, False, None
    return cut_page(query, answer)
