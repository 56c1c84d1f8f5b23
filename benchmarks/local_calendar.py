"""Timing of local-calendar answers (issue 14, point 4): not a test, never asserted.

    python -m benchmarks.local_calendar [HOME]

Builds (once, in HOME, default .stratum-bench-local) 10 participants x 1 year of steps per
minute, rolled up and synced to the lake, then times engine.run for daily answers in UTC,
in a whole-hour zone (America/New_York: the 1h tier is exact), in half- and quarter-hour
zones (Asia/Kolkata, Asia/Kathmandu: the 1m tier), and tz=local with a mid-year move, plus
weeks and months. Prints, after a warm-up, the median of repeated runs computed from the
rows (the calendar cache emptied before each) and read from the calendar cache (warm). Then
three rounds of the nightly prefill (engine/calendarprefill.py) of the whole year, from an
empty cache, in each participant's zones and the three zones asked, each followed by the
first answer of each case. The private PostgreSQL it starts is stopped at the end.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa

from engine.access import LOCAL_ADMIN
from engine.calendarprefill import mark_all_pending, prefill_calendar
from engine.query import DataQuery, build_query
from engine.run import Engine
from engine.settings import load_settings
from sync.export import sync_to_lake
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.localdb import database_url, stop_local_postgres
from sync.rollups import refresh_rollups
from sync.schema import init_schema
from sync.zones import DAWN, ZoneChange, record

USERS, DAYS, START = 10, 366, date(2024, 1, 1)
REPEATS = 7
COLD_REPEATS = 3
PREFILL_ROUNDS = 3
CASES = {
    "UTC daily": {"resolution": "1d"},
    "America/New_York daily": {"resolution": "1d", "tz": "America/New_York"},
    "Asia/Kolkata daily": {"resolution": "1d", "tz": "Asia/Kolkata"},
    "Asia/Kathmandu daily": {"resolution": "1d", "tz": "Asia/Kathmandu"},
    "tz=local daily (moves)": {"resolution": "1d", "tz": "local"},
    "UTC weekly": {"resolution": "1w"},
    "tz=local monthly": {"resolution": "1mo", "tz": "local"},
}


# What the benchmark's nightly prefill computes (STRATUM_CALENDAR_PREFILL): each participant's
# own days, and those of the zones the cases ask.
PREFILL_ZONES = ("local", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu")


def build(home: Path) -> str:
    settings = load_settings({"STRATUM_HOME": str(home)})
    url = database_url(None, settings.database.home)
    marker = home / "built"
    init_schema(url)  # a home built by an older version gets the newer migrations
    if marker.exists():
        return url
    started = time.perf_counter()
    ingest_tables(url, generate_cohort(USERS, DAYS, START, metrics=["steps"], every_s=60))
    refresh_rollups(url)
    engine = Engine(settings, url)
    try:
        sync_to_lake(url, engine.lake, grace_days=1, batch_days=366, today=date(2025, 6, 1))
    finally:
        engine.close()
    # Half the cohort in Kolkata, half in New York; participant 1 moves to London mid-year.
    changes = [
        ZoneChange(u, DAWN, "Asia/Kolkata" if u % 2 else "America/New_York")
        for u in range(1, USERS + 1)
    ]
    changes.append(ZoneChange(1, datetime(2024, 6, 10, 14, 7, tzinfo=UTC), "Europe/London"))
    record(url, changes)
    marker.write_text("ok")
    print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
    return url


def empty_cache(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM calendar_cache")


def case_query(engine: Engine, params: dict[str, str]) -> DataQuery:
    text = {
        "user_id": ",".join(str(u) for u in range(1, USERS + 1)),
        "metric": "steps",
        "start": "2024-01-01",
        "end": "2025-01-01",
        "page_size": "0",
        **params,
    }
    return build_query(
        {k: [v] for k, v in text.items()}, engine.settings.query, principal=LOCAL_ADMIN
    )


def answer_seconds(engine: Engine, query: DataQuery) -> tuple[float, int, Any]:
    """(seconds, rows, the calendar cache's hits and misses or None)."""
    began = time.perf_counter()
    answer = engine.run(query)
    rows = pa.Table.from_batches(list(answer.batches), schema=answer.schema).num_rows
    return time.perf_counter() - began, rows, (answer.plan.calendar or {}).get("cache")


def time_case(engine: Engine, url: str, params: dict[str, str]) -> tuple[float, float, int, str]:
    """(computed ms, cached ms, rows, what is read when computed)."""
    query = case_query(engine, params)
    empty_cache(url)
    plan = engine.plan(query)
    tier = plan.calendar["tier"] if plan.calendar else plan.resolution

    def timed() -> tuple[float, int]:
        seconds, rows, _ = answer_seconds(engine, query)
        return seconds, rows

    for _ in range(2):  # the first runs warm the catalog and the file checks
        empty_cache(url)
        timed()
    computed = []
    for _ in range(COLD_REPEATS):
        empty_cache(url)
        computed.append(timed()[0])
    cached = [timed() for _ in range(REPEATS)]  # the last computed run filled the cache
    rows = cached[-1][1]
    return (
        statistics.median(computed) * 1e3,
        statistics.median(seconds for seconds, _ in cached) * 1e3,
        rows,
        f"{tier} from {'+'.join(plan.sources)}",
    )


def after_prefill(engine: Engine, url: str) -> None:
    """PREFILL_ROUNDS times: the nightly prefill of the whole year from an empty cache, then
    each case's first answer (the engine warm, as a serving process is; the cache as the
    prefill left it). Prints the medians and ranges."""
    prefills: list[float] = []
    firsts: dict[str, list[float]] = {name: [] for name in CASES}
    caches: dict[str, Any] = {}
    for _ in range(PREFILL_ROUNDS):
        empty_cache(url)
        mark_all_pending(url)
        done = prefill_calendar(engine, url, PREFILL_ZONES)
        prefills.append(done.seconds)
        for name, params in CASES.items():
            seconds, _, caches[name] = answer_seconds(engine, case_query(engine, params))
            firsts[name].append(seconds * 1e3)
    print(
        f"prefill of the year ({', '.join(PREFILL_ZONES)}): median "
        f"{statistics.median(prefills):.1f} s ({min(prefills):.1f}-{max(prefills):.1f}), "
        f"{done.requests} requests, "
        f"{done.computed:,} entries",
        flush=True,
    )
    for name, times in firsts.items():
        print(
            f"{name:28} first after prefill {statistics.median(times):7.1f} ms "
            f"({min(times):.1f}-{max(times):.1f})  (cache {caches[name]})",
            flush=True,
        )


def main(argv: list[str]) -> int:
    home = Path(argv[0] if argv else ".stratum-bench-local").resolve()
    home.mkdir(parents=True, exist_ok=True)
    try:
        url = build(home)
        engine = Engine(load_settings({"STRATUM_HOME": str(home)}), url)
        try:
            print(
                f"{USERS} participants x 1 year of steps per minute; median of "
                f"{COLD_REPEATS} computed, {REPEATS} cached"
            )
            for name, params in CASES.items():
                computed, cached, rows, source = time_case(engine, url, params)
                print(
                    f"{name:28} computed {computed:8.1f} ms  cached {cached:7.1f} ms  "
                    f"{rows:6,} rows  ({source})",
                    flush=True,
                )
            after_prefill(engine, url)
        finally:
            engine.close()
    finally:
        stop_local_postgres(home)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
