"""Routing as plain tables: which store and tier serve which part of a span."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from engine import planner
from engine.access import LOCAL_ADMIN
from engine.catalog import Catalog, Coverage
from engine.plan import Plan
from engine.planner import plan
from engine.query import DataQuery
from engine.resolution import choose_resolution
from engine.tiers import LAKE_TABLES
from lake import LakeFile


def q(start: str, end: str, resolution: str = "raw", users: tuple[int, ...] = (1,)) -> DataQuery:
    return DataQuery(
        users=users,
        metrics=("heart_rate",),
        start=datetime.fromisoformat(start).replace(tzinfo=UTC),
        end=datetime.fromisoformat(end).replace(tzinfo=UTC),
        resolution=resolution,  # type: ignore[arg-type]
        requested_resolution=resolution,
        max_points=10_000,
        page_size=100,
        page_number=1,
        principal=LOCAL_ADMIN,
    )


def d(text: str) -> date:
    return date.fromisoformat(text)


def fake_files(tier, users, start, end, version):  # type: ignore[no-untyped-def]
    return tuple(
        LakeFile(f"/lake/{tier}/{u}/{start.date()}", u, start.date(), end.date(), 10, 100)
        for u in users
    )


Spec = dict[int, list[tuple[str, str]]]


def catalog(
    lake: Spec, stale: Spec | None = None, tier: str = "raw", unsynced: Spec | None = None
) -> Catalog:
    def cov(spec: Spec) -> Coverage:
        return Coverage({u: tuple((d(a), d(b)) for a, b in r) for u, r in spec.items()})

    lake_days = {t: cov(lake) if t == tier else Coverage() for t in LAKE_TABLES}
    return Catalog(
        lake_days=lake_days,
        unsynced=cov(unsynced or {}),
        stale_rollups=cov(stale or {}),
        lake_versions=dict.fromkeys(LAKE_TABLES, 3),
        list_files=fake_files,
    )


def layout(p) -> list[tuple[str, str, str, str, tuple[int, ...]]]:  # type: ignore[no-untyped-def]
    return [
        (s.backend, s.source, s.start.isoformat()[:16], s.end.isoformat()[:16], s.users)
        for s in p.segments
    ]


@pytest.mark.parametrize(
    ("lake", "start", "end", "expected"),
    [
        # nothing synced: all warm
        (
            {},
            "2024-01-01",
            "2024-01-03",
            [("warm", "raw_data", "2024-01-01T00:00", "2024-01-03T00:00", (1,))],
        ),
        # synced through Jan 1: lake then warm, seam at midnight
        (
            {1: [("2023-12-01", "2024-01-01")]},
            "2024-01-01T06:00",
            "2024-01-03",
            [
                ("lake", "raw", "2024-01-01T06:00", "2024-01-02T00:00", (1,)),
                ("warm", "raw_data", "2024-01-02T00:00", "2024-01-03T00:00", (1,)),
            ],
        ),
        # a changed day inside the synced range comes from the warm store
        (
            {1: [("2024-01-01", "2024-01-01"), ("2024-01-03", "2024-01-04")]},
            "2024-01-01",
            "2024-01-05",
            [
                ("lake", "raw", "2024-01-01T00:00", "2024-01-02T00:00", (1,)),
                ("warm", "raw_data", "2024-01-02T00:00", "2024-01-03T00:00", (1,)),
                ("lake", "raw", "2024-01-03T00:00", "2024-01-05T00:00", (1,)),
            ],
        ),
        # span entirely in the lake
        (
            {1: [("2020-01-01", "2024-12-31")]},
            "2022-01-01",
            "2023-01-01",
            [("lake", "raw", "2022-01-01T00:00", "2023-01-01T00:00", (1,))],
        ),
    ],
)
def test_split_at_the_lake_watermark(lake, start, end, expected) -> None:  # type: ignore[no-untyped-def]
    assert layout(plan(q(start, end), catalog(lake))) == expected


def test_users_with_the_same_watermark_share_segments() -> None:
    lake = {
        1: [("2024-01-01", "2024-01-01")],
        2: [("2024-01-01", "2024-01-01")],
        3: [("2024-01-01", "2024-01-02")],
    }
    got = layout(plan(q("2024-01-01", "2024-01-03", users=(1, 2, 3)), catalog(lake)))
    assert got == [
        ("lake", "raw", "2024-01-01T00:00", "2024-01-02T00:00", (1, 2)),
        ("lake", "raw", "2024-01-01T00:00", "2024-01-03T00:00", (3,)),
        ("warm", "raw_data", "2024-01-02T00:00", "2024-01-03T00:00", (1, 2)),
    ]


def test_stale_rollups_are_computed_from_raw() -> None:
    lake = {1: [("2024-01-01", "2024-01-01")]}
    stale = {1: [("2024-01-03", "2024-01-03")]}
    got = plan(q("2024-01-01", "2024-01-04", "1h"), catalog(lake, stale, tier="agg_1h"))
    assert [(s.backend, s.source, s.rollup_from_raw) for s in got.segments] == [
        ("lake", "agg_1h", False),
        ("warm", "data_1h", False),
        ("warm", "raw_data", True),
    ]


@pytest.mark.parametrize("resolution", ["1h", "1d"])
def test_small_rollup_answers_come_whole_from_the_warm_store(resolution: str) -> None:
    """The warm store keeps 1h and 1d forever: a small answer needs no lake files."""

    def plan(query: DataQuery, catalog: Catalog) -> Plan:
        return planner.plan(query, catalog, warm_rollup_rows=100_000)

    lake = {1: [("2024-01-01", "2024-01-02")]}
    stale = {1: [("2024-01-03", "2024-01-03")]}
    small = q("2024-01-01", "2024-01-04", resolution)
    got = plan(small, catalog(lake, stale, tier=f"agg_{resolution}"))
    assert [(s.backend, s.source, s.rollup_from_raw) for s in got.segments] == [
        ("warm", f"data_{resolution}", False),
        ("warm", "raw_data", True),
    ]
    # Raw and 1m leave the warm store when tiered: the lake serves them whatever the size.
    assert (
        plan(q("2024-01-01", "2024-01-02", "1m"), catalog(lake, tier="agg_1m")).segments[0].backend
        == "lake"
    )
    # With the warm store unreachable, the lake serves what it holds.
    down = replace(catalog(lake, tier=f"agg_{resolution}"), warm_available=False)
    assert plan(q("2024-01-01", "2024-01-03", resolution), down).segments[0].backend == "lake"
    # A large answer (400 participants x a year: 146,400 days or more) reads the lake.
    many = replace(small, users=tuple(range(1, 401)), end=small.start + timedelta(days=366))
    assert plan(many, catalog(lake, tier=f"agg_{resolution}")).segments[0].backend == "lake"


def test_days_written_since_their_sync_never_come_from_the_lake() -> None:
    lake = {1: [("2024-01-01", "2024-01-03")]}
    unsynced = {1: [("2024-01-02", "2024-01-02")]}
    got = layout(plan(q("2024-01-01", "2024-01-04"), catalog(lake, unsynced=unsynced)))
    assert [(b, start[:10], end[:10]) for b, _, start, end, _ in got] == [
        ("lake", "2024-01-01", "2024-01-02"),
        ("warm", "2024-01-02", "2024-01-03"),
        ("lake", "2024-01-03", "2024-01-04"),
    ]


def test_raw_resolution_ignores_rollup_staleness() -> None:
    got = plan(q("2024-01-01", "2024-01-02"), catalog({}, {1: [("2024-01-01", "2024-01-01")]}))
    assert [(s.source, s.rollup_from_raw) for s in got.segments] == [("raw_data", False)]


def test_lake_days_of_another_tier_are_not_used() -> None:
    got = plan(q("2024-01-01", "2024-01-02", "1d"), catalog({1: [("2024-01-01", "2024-01-01")]}))
    assert got.sources == ["warm"]


def test_lake_segment_carries_pinned_files() -> None:
    got = plan(q("2024-01-01", "2024-01-02"), catalog({1: [("2024-01-01", "2024-01-01")]}))
    (segment,) = got.segments
    assert segment.lake_version == 3 and segment.files and segment.estimated_rows == 10


@pytest.mark.parametrize(
    ("metrics", "days", "expected"),
    [
        (("heart_rate",), 0.05, "raw"),  # 4,320 points
        (("heart_rate",), 1, "1m"),  # 86,400 raw points > 5,000
        (("steps",), 1, "raw"),  # native 60 s: 1,440
        (("heart_rate", "steps"), 1, "1m"),
        (("heart_rate",), 7, "1h"),  # 10,080 minutes > 5,000
        (("heart_rate",), 30, "1h"),
        (("heart_rate",), 365, "1d"),  # 8,760 hours > 5,000
        (("hrv",), 14, "raw"),  # native 300 s: 4,032
        (("heart_rate",), 365 * 40, "1d"),  # floor
    ],
)
def test_auto_resolution(metrics: tuple[str, ...], days: float, expected: str) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    assert choose_resolution(metrics, start, start + timedelta(days=days), 5_000) == expected
