"""Calendar buckets (local days, ISO weeks, months) as UTC intervals, per participant.

A local bucket is the span of UTC instants whose local date (in the zone of that instant's
period) falls in it: a day starts at the first instant of its local date, so New York's
2024-03-10 lasts 1,380 minutes and its 2024-11-03 1,500. A zone change (travel) inside a
bucket cuts it there: the part before keeps the old zone, the part after is a bucket of the
new zone starting at the change, and both say `split`. Pure: no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from engine.zones import Period, zone

Calendar = Literal["1d", "1w", "1mo"]
CALENDARS: tuple[Calendar, ...] = ("1d", "1w", "1mo")


def label(day: date, calendar: Calendar) -> date:
    """The first local date of the bucket holding `day`: itself, its Monday, its 1st."""
    if calendar == "1w":
        return day - timedelta(days=day.weekday())
    if calendar == "1mo":
        return day.replace(day=1)
    return day


def following(first: date, calendar: Calendar) -> date:
    """The first local date of the next bucket."""
    if calendar == "1w":
        return first + timedelta(days=7)
    if calendar == "1mo":
        return date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first + timedelta(days=1)


def local_midnight(day: date, tz: str) -> datetime:
    """The first UTC instant of `day` in `tz`. fold=0 is the right reading both ways: in a
    gap at midnight it gives the transition itself (the day's first instant), and of a
    midnight that occurs twice, the earlier."""
    return datetime.combine(day, time(0), tzinfo=zone(tz)).astimezone(UTC)


@dataclass(frozen=True)
class Bucket:
    """One calendar bucket of one participant, or its part on one side of a zone change."""

    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    local_date: date  # the bucket's first local date (the day, Monday, 1st of the month)
    tz: str
    split: bool  # cut by a zone change

    @property
    def minutes(self) -> int:
        return int((self.end - self.start).total_seconds() // 60)


def period_buckets(period: Period, calendar: Calendar) -> Iterator[Bucket]:
    """The buckets of one zone period, in order, cut at the period's ends."""
    yield from _period_buckets(period.start, period.end, period.tz, calendar)


@functools.lru_cache(maxsize=256)
def _cached(start: datetime, end: datetime, tz: str, calendar: Calendar) -> tuple[Bucket, ...]:
    return tuple(_walk(start, end, tz, calendar))


def _period_buckets(
    start: datetime, end: datetime, tz: str, calendar: Calendar
) -> tuple[Bucket, ...]:
    # Participants sharing a zone share one walk (tz=Europe/Berlin for a whole cohort).
    return _cached(start, end, tz, calendar)


def _walk(start: datetime, end: datetime, tz: str, calendar: Calendar) -> Iterator[Bucket]:
    first = label(start.astimezone(zone(tz)).date(), calendar)
    bucket_start = local_midnight(first, tz)
    while bucket_start < end:
        upcoming = following(first, calendar)
        bucket_end = local_midnight(upcoming, tz)
        lo, hi = max(bucket_start, start), min(bucket_end, end)
        if lo < hi:
            yield Bucket(lo, hi, first, tz, lo != bucket_start or hi != bucket_end)
        first, bucket_start = upcoming, bucket_end


def buckets(
    zone_periods: list[Period],
    calendar: Calendar,
    *,
    since: datetime,
    until: datetime,
    first_date: date | None = None,
    end_date: date | None = None,
) -> list[Bucket]:
    """The buckets a query selects: those whose start lies in [since, until) and, when
    given, whose local date lies in [first_date, end_date). `zone_periods` must cover the
    instants of every bucket that can be selected (the caller widens them by a day)."""
    out = []
    for period in zone_periods:
        for bucket in period_buckets(period, calendar):
            if not since <= bucket.start < until:
                continue
            if first_date is not None and bucket.local_date < first_date:
                continue
            if end_date is not None and bucket.local_date >= end_date:
                continue
            out.append(bucket)
    return out
