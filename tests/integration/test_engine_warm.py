"""The engine over a real warm store: pages, cursors, deep pages and fresh tails agree."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

from engine import paging
from engine.access import LOCAL_ADMIN
from engine.overview import Health
from engine.query import Key, build_query, to_us
from engine.run import Engine
from engine.settings import load_settings
from engine.timings import StageTimes
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.rollups import refresh_rollups
from tests.integration.plans import all_nodes

START = date(2024, 3, 1)


@pytest.fixture
def engine(warm_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    ingest_tables(
        warm_url, generate_cohort(3, 3, START, seed=7, metrics=["heart_rate", "steps"], every_s=30)
    )
    refresh_rollups(warm_url)
    settings = load_settings({"STRATUM_HOME": str(tmp_path), "STRATUM_MEMORY_BUDGET": "1GiB"})
    engine = Engine(settings, warm_url)
    yield engine
    engine.close()


def params(**extra: str) -> dict[str, list[str]]:
    base = {
        "user_id": "1,2,3",
        "metric": "heart_rate,steps",
        "start": "2024-03-01",
        "end": "2024-03-04",
    }
    return {k: [v] for k, v in {**base, **extra}.items()}


def rows(engine: Engine, **extra: str) -> list[dict]:
    answer = engine.run(build_query(params(**extra), engine.settings.query, principal=LOCAL_ADMIN))
    return pa.Table.from_batches(list(answer.batches), schema=answer.schema).to_pylist()


@pytest.mark.parametrize("resolution", ["raw", "1m", "1h", "1d"])
def test_pages_and_cursor_walk_equal_the_whole_answer(engine: Engine, resolution: str) -> None:
    whole = rows(engine, resolution=resolution, page_size="0")
    assert whole, "the cohort should produce rows"
    keys = [(r["user_id"], r["metric"], r["ts"]) for r in whole]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    size = max(1, len(whole) // 7)
    by_number, page = [], 1
    while True:
        got = rows(engine, resolution=resolution, page_size=str(size), page_number=str(page))
        if not got:
            break
        by_number += got
        page += 1
    assert by_number == whole
    by_cursor: list[dict] = []
    cursor = None
    while True:
        extra = {"resolution": resolution, "page_size": str(size)}
        if cursor:
            extra["cursor"] = cursor
        answer = engine.run(
            build_query(params(**extra), engine.settings.query, principal=LOCAL_ADMIN)
        )
        by_cursor += pa.Table.from_batches(list(answer.batches), schema=answer.schema).to_pylist()
        cursor = answer.next_cursor
        if not answer.has_more:
            break
    assert by_cursor == whole


def test_deep_page_in_a_partial_span_matches_a_linear_skip(engine: Engine) -> None:
    extra = {"resolution": "raw", "start": "2024-03-01T05:30:00Z", "end": "2024-03-03T17:00:00Z"}
    whole = rows(engine, page_size="0", **extra)
    page = rows(engine, page_size="97", page_number="40", **extra)
    assert page == whole[97 * 39 : 97 * 40]


@pytest.mark.parametrize("resolution", ["raw", "1m"])
def test_deep_pages_in_a_partial_span_skip_its_partial_days_exactly(
    engine: Engine, resolution: str
) -> None:
    # A span from 05:30: day counts hold whole days, so the first day's rows in the span
    # are counted from the answer itself; the page then starts at a later day instead of
    # reading every row from the span's start and dropping them.
    extra = {"resolution": resolution, "start": "2024-03-01T05:30:00Z", "end": "2024-03-03T17:00Z"}
    whole = rows(engine, page_size="0", **extra)
    for number in (2, 40, 41, len(whole) // 97 + 1):
        page = rows(engine, page_size="97", page_number=str(number), **extra)
        assert page == whole[97 * (number - 1) : 97 * number], number
    query = build_query(
        params(page_size="97", page_number="40", **extra),
        engine.settings.query,
        principal=LOCAL_ADMIN,
    )
    plan, catalog = engine.checked_plan(query)
    times = StageTimes()
    after, skip = engine._start(plan, catalog, times)
    # Rows 3,783 on: past the first series' partial day, dropped within one day at most.
    assert after is not None and after != Key(1, "heart_rate", to_us(query.start) - 1)
    assert skip < {"raw": 2_880, "1m": 1_440}[resolution] < query.offset


@pytest.mark.parametrize("resolution", ["raw", "1d"])
def test_a_deep_pages_counts_are_read_from_the_index_alone(
    engine: Engine, warm_url: str, resolution: str
) -> None:
    # Filtering every day_counts row of the span by `= ANY` of the participants and metrics
    # took 6-11 ms for 10 x 3 series over a year; one series at a time by equalities, from an
    # index that carries the counts, 2.6 ms.
    with psycopg.connect(warm_url, autocommit=True) as conn:
        conn.execute("VACUUM day_counts")  # as settled days' pages are: all-visible
        # This table is tiny: ask for an index path; the index holds the counts or it is not
        # an index-only one.
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        span = {"first": START, "last": date(2024, 3, 3)}
        totals, days = paging.count_statements(resolution)
        for sql, values in (
            (totals, {**span, "users": [1, 2, 3], "metrics": ["heart_rate", "steps"]}),
            (days, {**span, "user_id": 2, "metric": "steps"}),
        ):
            plan = conn.execute(b"EXPLAIN (ANALYZE, FORMAT JSON) " + sql, values).fetchone()
            assert plan is not None
            scans = [
                n for n in all_nodes(plan[0][0]["Plan"]) if n.get("Relation Name") == "day_counts"
            ]
            assert scans and all(node["Node Type"] == "Index Only Scan" for node in scans), sql
            for node in scans:
                assert "ANY" not in node["Index Cond"], sql
                assert node["Index Cond"].count("=") >= 2 and "Filter" not in node, sql


def test_fresh_tail_is_computed_from_raw(engine: Engine, warm_url: str) -> None:
    before = rows(engine, resolution="1h", page_size="0")
    late = pa.table(
        {
            "ts": pa.array([1_709_337_600_000_000], pa.timestamp("us", tz="UTC")),  # 03-02 00:00
            "user_id": pa.array([1], pa.int32()),
            "metric": ["heart_rate"],
            "value": [250.0],
        }
    )
    ingest_tables(warm_url, [late])  # not refreshed: data_1h is stale for that day
    plan = engine.plan(
        build_query(params(resolution="1h"), engine.settings.query, principal=LOCAL_ADMIN)
    )
    assert any(s.rollup_from_raw for s in plan.segments)
    after = rows(engine, resolution="1h", page_size="0")
    changed = [a for a, b in zip(after, before, strict=True) if a != b]
    assert [(r["user_id"], r["metric"], r["max"]) for r in changed] == [(1, "heart_rate", 250.0)]
    refresh_rollups(warm_url)
    refreshed = rows(engine, resolution="1h", page_size="0")
    assert [(r["count"], r["min"], r["max"]) for r in refreshed] == [
        (r["count"], r["min"], r["max"]) for r in after
    ]


def test_overview_and_health_come_from_the_engines_own_connections(
    engine: Engine, tmp_path: Path
) -> None:
    summary = engine.overview(LOCAL_ADMIN)
    assert summary.warm_store and [c["user_id"] for c in summary.coverage or []] == [1, 2, 3]
    assert set(summary.lake_versions) == {"raw", "agg_1m", "agg_1h", "agg_1d"}
    assert engine.health().ok
    offline = Engine(engine.settings, None)  # no warm store configured
    try:
        assert (
            not offline.overview(LOCAL_ADMIN).warm_store
            and offline.overview(LOCAL_ADMIN).coverage is None
        )
        assert offline.health() == Health(warm_store=False, lake=True)
    finally:
        offline.close()
