"""What a cohort job reads: the engine's plan of the cohort's 1m answer, lake segments only.

The engine decides, as for `/data`: a participant-day comes from the lake when it is synced,
verified and unchanged since; its files are checked against what the catalog recorded at
commit (size, SHA-256) before they are read; the table version is the one the catalog
pinned, never older than the one each day was verified at. The job reads exactly those
lake segments at that version. The other days (not synced yet, written since their sync,
or damaged) are left out and reported: a job over the lake never mixes in warm-store rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from engine.access import Principal
from engine.errors import StratumError, WarmStoreUnavailable
from engine.plan import Segment
from engine.query import DataQuery
from engine.run import Engine
from engine.tiers import TIERS

DayKey = tuple[int, date]
# Bytes one agg_1m row takes in the job's memory (scan, list aggregations, result), with
# room to spare: measured 54 B/row over 1.7M rows and 40 B/row over 6.9M rows (resting_hr,
# one chunk, RSS above the imports' 0.34 GB).
ROW_BYTES = 64


@dataclass(frozen=True)
class Span:
    """Participants whose lake days run from first_day to last_day (inclusive)."""

    users: tuple[int, ...]
    first_day: date
    last_day: date
    rows: int  # agg_1m rows of their files (all metrics), from the Delta log

    def days(self) -> list[DayKey]:
        count = (self.last_day - self.first_day).days + 1
        return [(u, self.first_day + timedelta(days=n)) for u in self.users for n in range(count)]


@dataclass(frozen=True)
class PinnedRead:
    table_dir: str  # the Delta table (agg_1m) of the lake
    version: int | None  # the version the catalog pinned (None: nothing in the lake)
    spans: tuple[Span, ...]  # per participant, so that chunks can split the cohort
    skipped: tuple[tuple[int, date, date], ...]  # (user, first, last) not served from the lake

    @property
    def lake_days(self) -> int:
        return sum(len(span.days()) for span in self.spans)

    @property
    def skipped_days(self) -> int:
        return sum((last - first).days + 1 for _, first, last in self.skipped)


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _last_day(segment: Segment) -> date:
    return (segment.end - timedelta(microseconds=1)).date()


def pin(
    engine: Engine,
    principal: Principal,
    users: tuple[int, ...],
    metrics: tuple[str, ...],
    start: date,
    end: date,
) -> PinnedRead:
    """The lake part of the cohort's 1m answer over the UTC days [start, end)."""
    query = DataQuery(
        users=users,
        metrics=tuple(sorted(metrics)),
        start=midnight(start),
        end=midnight(end),
        resolution="1m",
        requested_resolution="1m",
        max_points=engine.settings.query.max_points,
        page_size=0,
        page_number=1,
        principal=principal,
    )
    plan, catalog = engine.checked_plan(query)
    if not catalog.warm_available:  # planned from a cached catalog: it may be missing days
        raise WarmStoreUnavailable(
            "the warm store is unreachable: a job reads only the days its catalog verified"
        )
    versions = {s.lake_version for s in plan.segments if s.backend == "lake"}
    if len(versions) > 1:  # one catalog pins one version per table
        raise StratumError(f"the plan reads several lake versions: {sorted(map(str, versions))}")
    spans: list[Span] = []
    skipped: list[tuple[int, date, date]] = []
    for segment in plan.segments:
        first, last = segment.start.date(), _last_day(segment)
        if segment.backend != "lake":
            skipped.extend((user, first, last) for user in segment.users)
            continue
        for user in segment.users:
            rows = sum(f.rows for f in segment.files if f.user_id == user)
            spans.append(Span((user,), first, last, rows))
    version = versions.pop() if versions else None
    return PinnedRead(
        table_dir=engine.lake.table_dir(TIERS["1m"].lake_table),
        version=version,
        spans=tuple(spans),
        skipped=tuple(sorted(skipped)),
    )


def chunks(spans: tuple[Span, ...], budget_rows: int) -> list[list[Span]]:
    """Consecutive runs of spans of at most `budget_rows` rows each (a participant whose
    own rows exceed it runs alone), so that the job's memory stays under the budget."""
    out: list[list[Span]] = []
    rows = 0
    for span in spans:
        if out and rows + span.rows <= budget_rows:
            out[-1].append(span)
            rows += span.rows
        else:
            out.append([span])
            rows = span.rows
    return out
