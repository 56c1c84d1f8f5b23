"""The calendar cache (engine/calendarcache.py): a repeated calendar answer reads computed
buckets, and stays exact under late rows, zone-history edits, backfills and a fill racing a
write. Each test asks once to fill the cache, checks the next answer is read from it, then
changes something and checks the answer after."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine import calendarcache
from engine.access import LOCAL_ADMIN
from engine.query import build_query
from engine.run import Engine
from engine.settings import load_settings
from sync.backfill import backfill_files
from sync.calendar_cache import prune_calendar_cache
from sync.export import sync_to_lake
from sync.ingest import ingest_tables
from sync.rollups import refresh_rollups
from sync.tiering import tier_warm_store
from sync.zones import DAWN, ZoneChange, record

USER = 1
FIRST = datetime(2024, 3, 10, tzinfo=UTC)
DAYS = 4  # of steps once a minute, value 1
TODAY = date(2024, 3, 20)
# Kolkata's 03-11 .. 03-13: UTC 03-10 18:30 .. 03-13 18:30.
ASKED = {"start": "2024-03-11", "end": "2024-03-14"}
KOLKATA_DAY = [date(2024, 3, 11), date(2024, 3, 12), date(2024, 3, 13)]


def minutes(first: datetime, count: int, value: float = 1.0, second: int = 0) -> pa.Table:
    return pa.table(
        {
            "ts": pa.array(
                [first + timedelta(minutes=i, seconds=second) for i in range(count)],
                pa.timestamp("us", tz="UTC"),
            ),
            "user_id": pa.array([USER] * count, pa.int32()),
            "metric": ["steps"] * count,
            "value": [value] * count,
        }
    )


def make_engine(url: str, home: Path, **env: str) -> Engine:
    settings = load_settings({"STRATUM_HOME": str(home), **env})
    return Engine(settings, url)


def ask(engine: Engine, **params: str) -> tuple[list[tuple[Any, ...]], dict[str, int] | None]:
    """(local_date, tz, count, sum, min, max) per row, and the plan's cache counts."""
    text = {
        "user_id": str(USER),
        "metric": "steps",
        "resolution": "1d",
        "tz": "local",
        "page_size": "0",
        **ASKED,
        **params,
    }
    query = build_query(
        {k: [v] for k, v in text.items()}, engine.settings.query, principal=LOCAL_ADMIN
    )
    cache = engine.plan(query).calendar["cache"]  # type: ignore[index]
    result = engine.run(query)
    table = pa.Table.from_batches(list(result.batches), schema=result.schema)
    answer = [
        (r["local_date"], r["tz"], r["count"], r["sum"], r["min"], r["max"])
        for r in table.to_pylist()
    ]
    return answer, cache


def cached_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM calendar_cache").fetchone()
        return int(row[0]) if row else 0


@pytest.fixture
def engine(flavour_url: str, tmp_path: Path) -> Iterator[Engine]:
    """Kolkata, four UTC days of steps, the first two in the lake."""
    ingest_tables(flavour_url, [minutes(FIRST, DAYS * 1440)])
    refresh_rollups(flavour_url)
    record(flavour_url, [ZoneChange(USER, DAWN, "Asia/Kolkata")])
    built = make_engine(flavour_url, tmp_path)
    sync_to_lake(flavour_url, built.lake, grace_days=8, batch_days=5, today=TODAY)
    yield built
    built.close()


def whole_days(tz: str = "Asia/Kolkata") -> list[tuple[Any, ...]]:
    return [(day, tz, 1440, 1440.0, 1.0, 1.0) for day in KOLKATA_DAY]


def test_a_repeated_answer_is_read_from_the_cache(engine: Engine, flavour_url: str) -> None:
    assert ask(engine) == (whole_days(), {"hits": 0, "misses": 3})
    assert cached_rows(flavour_url) == 3
    assert ask(engine) == (whole_days(), {"hits": 3, "misses": 0})
    # A span overlapping it reads only the day it lacks (03-14 holds UTC 03-13's last rows).
    answer, cache = ask(engine, start="2024-03-12", end="2024-03-15")
    assert cache == {"hits": 2, "misses": 1}
    assert answer == [*whole_days()[1:], (date(2024, 3, 14), "Asia/Kolkata", 330, 330.0, 1.0, 1.0)]


def test_a_late_row_after_a_cached_answer_changes_the_next_answer_exactly(
    engine: Engine, flavour_url: str
) -> None:
    ask(engine)
    # Into a lake day (UTC 03-11, 20:00: Kolkata's 03-12 at 01:30) and a warm one.
    late = [
        minutes(datetime(2024, 3, 11, 20, 0, tzinfo=UTC), 1, value=1000.0, second=30),
        minutes(datetime(2024, 3, 13, 17, 0, tzinfo=UTC), 2, value=7.0, second=10),
    ]
    ingest_tables(flavour_url, late)
    answer, cache = ask(engine)
    # UTC 03-11 touches Kolkata's 03-11 and 03-12; UTC 03-13 its 03-13 (and 03-14, not asked).
    assert cache == {"hits": 0, "misses": 3}
    assert answer == [
        (KOLKATA_DAY[0], "Asia/Kolkata", 1440, 1440.0, 1.0, 1.0),
        (KOLKATA_DAY[1], "Asia/Kolkata", 1441, 2440.0, 1.0, 1000.0),
        (KOLKATA_DAY[2], "Asia/Kolkata", 1442, 1454.0, 1.0, 7.0),
    ]
    assert ask(engine) == (answer, {"hits": 3, "misses": 0})


def test_a_zone_history_edit_changes_the_next_answer(engine: Engine, flavour_url: str) -> None:
    ask(engine)
    record(flavour_url, [ZoneChange(USER, DAWN, "Europe/London")])  # replaces Kolkata
    answer, cache = ask(engine)
    assert cache == {"hits": 0, "misses": 3}
    assert answer == whole_days("Europe/London")
    # A move mid-day splits it; the parts before and after are new intervals.
    record(flavour_url, [ZoneChange(USER, datetime(2024, 3, 12, 6, 0, tzinfo=UTC), "Asia/Tokyo")])
    answer, _ = ask(engine)
    assert [(r[0], r[1], r[2]) for r in answer] == [
        (date(2024, 3, 11), "Europe/London", 1440),
        (date(2024, 3, 12), "Europe/London", 360),
        (date(2024, 3, 12), "Asia/Tokyo", 540),
        (date(2024, 3, 13), "Asia/Tokyo", 1440),
    ]


def test_a_fill_racing_a_late_row_never_stores_a_stale_answer(
    engine: Engine, flavour_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A late row that commits after the buckets were computed, before they are stored: the
    answer computed without it is stored, but never served after it."""
    real_fill = calendarcache.fill

    def late_row_then_fill(*args: Any) -> int:
        ingest_tables(flavour_url, [minutes(datetime(2024, 3, 12, 3, 0, tzinfo=UTC), 1, 50.0, 5)])
        return real_fill(*args)

    monkeypatch.setattr(calendarcache, "fill", late_row_then_fill)
    assert ask(engine)[0] == whole_days()  # computed before the late row
    monkeypatch.setattr(calendarcache, "fill", real_fill)
    answer, cache = ask(engine)
    assert cache == {"hits": 1, "misses": 2}  # 03-11 does not touch UTC 03-12
    assert answer[1] == (KOLKATA_DAY[1], "Asia/Kolkata", 1441, 1490.0, 1.0, 50.0)


def test_a_write_open_during_the_whole_answer_is_seen_once_it_commits(
    engine: Engine, flavour_url: str
) -> None:
    """Its change number is taken before the answer reads any, and it commits after the
    fill: the stored numbers are the older ones, so the entry is not served."""
    with psycopg.connect(flavour_url) as writer:
        writer.execute(
            "INSERT INTO raw_data (ts, user_id, metric, value) "
            "VALUES ('2024-03-12 03:00:05+00', %s, 'steps', 50)",
            (USER,),
        )
        writer.execute(
            "INSERT INTO day_state (user_id, day, change_seq) "
            "VALUES (%s, '2024-03-12', nextval('day_change_seq')) "
            "ON CONFLICT (user_id, day) DO UPDATE SET change_seq = EXCLUDED.change_seq",
            (USER,),
        )
        assert ask(engine)[0] == whole_days()
        assert cached_rows(flavour_url) == 3
    answer, cache = ask(engine)
    assert cache == {"hits": 1, "misses": 2}
    assert answer[1] == (KOLKATA_DAY[1], "Asia/Kolkata", 1441, 1490.0, 1.0, 50.0)


def test_a_backfill_replacing_a_day_changes_the_next_answer(
    flavour_url: str, tmp_path: Path
) -> None:
    lake_path = tmp_path / "lake"
    built = make_engine(flavour_url, tmp_path, STRATUM_LAKE_PATH=str(lake_path))
    try:
        record(flavour_url, [ZoneChange(USER, DAWN, "Asia/Kolkata")])

        def backfill(table: pa.Table, name: str) -> None:
            path = tmp_path / name
            pq.write_table(table, path)
            backfill_files(
                flavour_url, built.lake, [path], older_than_days=5, grace_days=1, today=TODAY
            )

        backfill(minutes(FIRST, DAYS * 1440), "first.parquet")
        assert ask(built) == (whole_days(), {"hits": 0, "misses": 3})
        assert ask(built)[1] == {"hits": 3, "misses": 0}
        backfill(minutes(datetime(2024, 3, 12, tzinfo=UTC), 1440, value=2.0), "again.parquet")
        answer, cache = ask(built)
        assert cache == {"hits": 1, "misses": 2}  # Kolkata's 03-11 does not touch UTC 03-12
        # UTC 03-12 now counts 2 a minute: Kolkata's 03-12 from 05:30, 03-13 until 05:30.
        assert answer == [
            whole_days()[0],
            (KOLKATA_DAY[1], "Asia/Kolkata", 1440, 1440.0 + 1110.0, 1.0, 2.0),
            (KOLKATA_DAY[2], "Asia/Kolkata", 1440, 1440.0 + 330.0, 1.0, 2.0),
        ]
    finally:
        built.close()


def test_tiering_keeps_the_entries_and_a_late_row_into_a_tiered_day_misses(
    engine: Engine, flavour_url: str
) -> None:
    """Tiering moves rows without changing them: the change numbers, and so the entries,
    stay. An ingest into a tiered day rehydrates it and takes a new number."""
    ask(engine)
    tiered = tier_warm_store(flavour_url, engine.lake, older_than_days=5, today=TODAY)
    assert tiered.days == 2  # UTC 03-10 and 03-11
    assert ask(engine) == (whole_days(), {"hits": 3, "misses": 0})
    ingest_tables(flavour_url, [minutes(datetime(2024, 3, 11, 2, 0, tzinfo=UTC), 1, 9.0, 1)])
    answer, cache = ask(engine)
    assert cache == {"hits": 1, "misses": 2}
    assert answer[0] == (KOLKATA_DAY[0], "Asia/Kolkata", 1441, 1449.0, 1.0, 9.0)
    assert answer[1:] == whole_days()[1:]


def test_with_the_cache_off_nothing_is_stored(flavour_url: str, tmp_path: Path) -> None:
    ingest_tables(flavour_url, [minutes(FIRST, DAYS * 1440)])
    record(flavour_url, [ZoneChange(USER, DAWN, "Asia/Kolkata")])
    built = make_engine(flavour_url, tmp_path, STRATUM_CALENDAR_CACHE_ROWS="0")
    try:
        assert ask(built) == (whole_days(), None)
        assert cached_rows(flavour_url) == 0
    finally:
        built.close()


def test_pruning_keeps_the_newest_fills(engine: Engine, flavour_url: str) -> None:
    ask(engine, start="2024-03-11", end="2024-03-12")
    ask(engine, start="2024-03-13", end="2024-03-14")
    assert prune_calendar_cache(flavour_url, max_rows=5).dropped == 0
    assert prune_calendar_cache(flavour_url, max_rows=1).dropped == 1
    assert ask(engine, start="2024-03-13", end="2024-03-14")[1] == {"hits": 1, "misses": 0}
    assert ask(engine, start="2024-03-11", end="2024-03-12")[1] == {"hits": 0, "misses": 1}
