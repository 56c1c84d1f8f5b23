"""The nightly prefill of the calendar cache (engine/calendarprefill.py): after the nightly
job, the first local daily answer is read from the cache whole, equal to the answer computed
from the rows; a late row or a zone-history edit makes the next prefill compute only the
intervals it changed; pruning keeps the prefilled entries longest."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from engine.access import LOCAL_ADMIN
from engine.calendarprefill import PrefillResult, mark_all_pending, prefill_calendar
from engine.query import DataQuery, build_query
from engine.run import Engine
from engine.settings import load_settings
from sync import jobs
from sync.calendar_cache import prune_calendar_cache
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.rollups import refresh_rollups
from sync.zones import DAWN, ZoneChange, record

USERS = "1,2,3"
FIRST = date(2024, 3, 8)  # six UTC days, over New York's DST change (03-10)
DAYS = 6
TODAY = date(2024, 3, 20)
# Every local date touching the data in every zone here.
SPAN = {"start": "2024-03-07", "end": "2024-03-15"}
ZONES = {1: "Asia/Kathmandu", 2: "Asia/Kolkata", 3: "America/New_York"}
ASKED = 8 * 3 * 2  # (local date, participant, metric) pairs of a SPAN answer
# Prefilled: the local days of each participant and of Kathmandu for the two elsewhere.
PREFILLED = ASKED + 8 * 2 * 2


def make_engine(url: str, home: Path, **env: str) -> Engine:
    return Engine(load_settings({"STRATUM_HOME": str(home), **env}), url)


def ask(engine: Engine, **params: str) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
    """The rows of a daily calendar answer, and the cache's hits and misses when it was
    asked (None: the cache is off)."""
    text = {
        "user_id": USERS,
        "metric": "steps,heart_rate",
        "resolution": "1d",
        "tz": "local",
        "page_size": "0",
        **SPAN,
        **params,
    }
    query = build_query(
        {k: [v] for k, v in text.items()}, engine.settings.query, principal=LOCAL_ADMIN
    )
    cache = engine.plan(query).calendar["cache"]  # type: ignore[index]
    result = engine.run(query)
    return pa.Table.from_batches(list(result.batches), schema=result.schema).to_pylist(), cache


def prefill(engine: Engine, url: str, *zones: str) -> PrefillResult:
    return prefill_calendar(engine, url, zones or ("local",))


def late_row(url: str, user_id: int, at: datetime, value: float) -> None:
    ingest_tables(
        url,
        [
            pa.table(
                {
                    "ts": pa.array([at], pa.timestamp("us", tz="UTC")),
                    "user_id": pa.array([user_id], pa.int32()),
                    "metric": ["steps"],
                    "value": [value],
                }
            )
        ],
    )
    refresh_rollups(url)


def cache_rows(url: str, prefilled: bool) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM calendar_cache WHERE prefilled = %s", (prefilled,)
        ).fetchone()
        return int(row[0]) if row else 0


@pytest.fixture
def home(flavour_url: str, tmp_path: Path) -> Iterator[Path]:
    """Three participants (Kathmandu, Kolkata, New York), six days of steps and heart rate
    per minute, through a nightly job that synced and tiered the older days and prefilled the
    cache for their local days and Kathmandu's."""
    ingest_tables(
        flavour_url,
        generate_cohort(3, DAYS, FIRST, metrics=["steps", "heart_rate"], every_s=60),
    )
    record(flavour_url, [ZoneChange(u, DAWN, zone) for u, zone in ZONES.items()])
    engine = make_engine(flavour_url, tmp_path, STRATUM_TIER_OLDER_THAN_DAYS="14")
    try:
        result = jobs.nightly_job(
            flavour_url,
            engine.settings.lake,
            today=TODAY,
            lake=engine.lake,
            calendar_cache_rows=engine.settings.query.calendar_cache_rows,
            prefill=lambda: prefill(engine, flavour_url, "local", "Asia/Kathmandu"),
        )
    finally:
        engine.close()
    assert result.status == "ok", result.error
    assert isinstance(result.detail, dict)
    assert list(result.detail)[-2:] == ["prefill_cache", "prune_cache"]  # prune keeps it
    assert result.detail["prefill_cache"].days == 3 * DAYS
    yield tmp_path


@pytest.fixture
def engine(flavour_url: str, home: Path) -> Iterator[Engine]:
    built = make_engine(flavour_url, home)
    yield built
    built.close()


@pytest.fixture
def uncached(flavour_url: str, home: Path) -> Iterator[Engine]:
    built = make_engine(flavour_url, home, STRATUM_CALENDAR_CACHE_ROWS="0")
    yield built
    built.close()


def test_after_the_nightly_job_the_first_local_answers_are_all_hits(
    engine: Engine, uncached: Engine
) -> None:
    for params in ({"tz": "local"}, {"tz": "Asia/Kathmandu"}):
        answer, cache = ask(engine, **params)
        assert cache is not None and cache["misses"] == 0 and cache["hits"] > 0, params
        assert answer == ask(uncached, **params)[0], params
        assert {row["tz"] for row in answer} == (
            set(ZONES.values()) if params["tz"] == "local" else {"Asia/Kathmandu"}
        )
    # A zone not prefilled is computed, as before.
    assert ask(engine, tz="Asia/Tokyo")[1] == {"hits": 0, "misses": ASKED}


def test_a_late_row_makes_the_next_prefill_compute_only_the_intervals_it_touched(
    engine: Engine, uncached: Engine, flavour_url: str
) -> None:
    nothing = prefill(engine, flavour_url)
    assert (nothing.days, nothing.requests, nothing.computed) == (0, 0, 0)
    # UTC 03-11 (a lake day) is Kathmandu's 03-11 05:45 .. 03-12 05:45: two local days.
    late_row(flavour_url, 1, datetime(2024, 3, 11, 20, 0, 30, tzinfo=UTC), 5000.0)

    done = prefill(engine, flavour_url)

    # One (participant, day); its request asks local dates 03-10 .. 03-12 of both metrics.
    assert (done.days, done.requests, done.computed, done.hits) == (1, 1, 4, 2)
    answer, cache = ask(engine)
    assert cache is not None and cache["misses"] == 0
    assert answer == ask(uncached)[0]
    assert any(row["max"] == 5000.0 for row in answer if row["local_date"] == date(2024, 3, 12))


def test_a_zone_history_edit_is_prefilled_from_its_day_on(
    engine: Engine, uncached: Engine, flavour_url: str
) -> None:
    # Participant 3 flies New York -> London on 03-11 at 12:00 UTC.
    record(flavour_url, [ZoneChange(3, datetime(2024, 3, 11, 12, tzinfo=UTC), "Europe/London")])

    done = prefill(engine, flavour_url)

    assert done.days == 4  # UTC 03-10 .. 03-13: the day before the change and after
    assert done.computed > 0
    answer, cache = ask(engine)
    assert cache is not None and cache["misses"] == 0
    assert answer == ask(uncached)[0]
    assert "Europe/London" in {row["tz"] for row in answer if row["user_id"] == 3}
    # Nothing else was marked: a second prefill has nothing to do.
    assert prefill(engine, flavour_url).days == 0


def test_a_zone_edit_landing_during_a_prefill_leaves_its_days_pending(
    engine: Engine, uncached: Engine, flavour_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    late_row(flavour_url, 3, datetime(2024, 3, 12, 12, tzinfo=UTC), 100.0)
    computed_for = engine.fill_calendar

    def fill_then_edit(query: DataQuery) -> tuple[dict[str, Any], int]:
        # The edit commits after the request read participant 3's zones (New York) and
        # before the prefill records the day as done.
        done = computed_for(query)
        record(flavour_url, [ZoneChange(3, datetime(2024, 3, 12, tzinfo=UTC), "Europe/London")])
        return done

    monkeypatch.setattr(engine, "fill_calendar", fill_then_edit)
    racing = prefill(engine, flavour_url)
    monkeypatch.undo()

    assert (racing.requests, racing.days) == (1, 0)  # computed, but not recorded as done
    after = prefill(engine, flavour_url)
    assert after.days == 3  # UTC 03-11 .. 03-13: from the day before the change on
    answer, cache = ask(engine)
    assert cache is not None and cache["misses"] == 0
    assert answer == ask(uncached)[0]
    assert "Europe/London" in {row["tz"] for row in answer if row["user_id"] == 3}


def test_pruning_drops_on_demand_entries_first_and_marks_pruned_prefilled_days(
    engine: Engine, flavour_url: str
) -> None:
    prefilled = cache_rows(flavour_url, prefilled=True)
    assert prefilled == PREFILLED
    assert cache_rows(flavour_url, prefilled=False) == 0
    ask(engine, tz="Asia/Tokyo")  # filled on demand, after the prefill: the newest fills
    on_demand = cache_rows(flavour_url, prefilled=False)
    assert on_demand > 0

    pruned = prune_calendar_cache(flavour_url, max_rows=prefilled)

    assert (pruned.dropped, pruned.prefilled, pruned.days_unfilled) == (on_demand, 0, 0)
    assert ask(engine)[1] == {"hits": ASKED, "misses": 0}
    # A budget below the prefilled entries drops the oldest and marks their days again.
    pruned = prune_calendar_cache(flavour_url, max_rows=prefilled - 2)
    assert (pruned.dropped, pruned.prefilled) == (2, 2)
    assert pruned.days_unfilled > 0
    done = prefill(engine, flavour_url, "local", "Asia/Kathmandu")
    assert done.days == pruned.days_unfilled and done.computed == 2
    assert ask(engine)[1] == {"hits": ASKED, "misses": 0}
    assert ask(engine, tz="Asia/Kathmandu")[1] == {"hits": ASKED, "misses": 0}


def test_prefill_all_marks_every_day_and_computes_nothing_already_cached(
    engine: Engine, flavour_url: str
) -> None:
    assert mark_all_pending(flavour_url) == 3 * DAYS
    done = prefill(engine, flavour_url, "local", "Asia/Kathmandu")
    assert (done.days, done.computed) == (3 * DAYS, 0)


def test_prefill_is_off_without_zones_or_cache(flavour_url: str, home: Path) -> None:
    mark_all_pending(flavour_url)
    off = make_engine(flavour_url, home, STRATUM_CALENDAR_CACHE_ROWS="0")
    try:
        assert prefill_calendar(off, flavour_url, ("local",)).days == 0
    finally:
        off.close()
    on = make_engine(flavour_url, home)
    try:
        assert prefill_calendar(on, flavour_url, ()).days == 0
    finally:
        on.close()
