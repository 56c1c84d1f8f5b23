"""Catalog + planning time of a one-participant query at cohort scale (issue 12, point 3):
not a test, never asserted.

    python -m benchmarks.cohort_catalog [HOME]

Builds (once, in HOME, default .stratum-bench-catalog) the catalog of a cohort without its
rows: 500 participants x 730 days, every day verified in all four lake tables (1,460,000
lake_days rows, 365,000 day_state rows, the days older than 30 days tiered), and a real
agg_1d Delta table (one file per participant-year, one row per day). Then times
Engine.plan (catalog + planning, the /plan stage timings) for one participant x one metric
x one year of daily values:
- steady: nothing changed since the previous query;
- after another participant's change: before each query one day of another participant is
  re-verified (as a sync records it: its lake_days row and the catalog generation);
- after its own change: the same for the participant asked;
and the same query for all 500 participants, steady and after one participant's change.
Prints the median of the repeated runs after a warm-up.
The private PostgreSQL it starts is stopped at the end.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa

from benchmarks.measure import elapsed_ms, median_ms
from engine.access import LOCAL_ADMIN
from engine.query import DataQuery, build_query
from engine.run import Engine
from engine.settings import load_settings
from lake import Lake
from lake.layout import data_schema
from sync.localdb import database_url, stop_local_postgres
from sync.schema import init_schema

USERS, DAYS, LAST = 500, 730, date(2025, 12, 31)
FIRST = LAST - timedelta(days=DAYS - 1)
TIERED_AFTER_DAYS = 30
REPEATS = 21
CHANGED_REPEATS = 11  # before issue 12 each of these reloaded the whole catalog (seconds)
DATABASE = "stratum_catalog_bench"
TABLES = ("raw", "agg_1m", "agg_1h", "agg_1d")

_DAY_STATE = """
INSERT INTO day_state (user_id, day, change_seq, refreshed_seq, synced_seq, tiered_seq)
SELECT u, d, s, s, s, CASE WHEN d < %(tiered_before)s THEN s END FROM (
    SELECT u, d::date AS d, row_number() OVER (ORDER BY u, d) AS s
    FROM generate_series(1, %(users)s) AS u,
         generate_series(%(first)s::date, %(last)s::date, interval '1 day') AS d
) AS days
"""
_LAKE_DAYS = """
INSERT INTO lake_days (user_id, tier, day, rows, checksum, change_seq, lake_version)
SELECT s.user_id, t.tier, s.day, 1, 0, s.change_seq, %(version)s
FROM day_state s CROSS JOIN unnest(%(tables)s::text[]) AS t(tier)
"""
# What a sync records when it re-verifies one day (sync/export.py's _record).
_REVERIFY = """
UPDATE lake_days SET verified_at = now() WHERE user_id = %(user)s AND day = %(day)s
"""


def _daily_rows() -> pa.Table:
    """One agg_1d row per participant-day (heart rate)."""
    schema = data_schema("agg_1d")
    users = np.repeat(np.arange(1, USERS + 1, dtype=np.int32), DAYS)
    days = np.tile(np.arange(DAYS, dtype=np.int32), USERS) + (FIRST - date(1970, 1, 1)).days
    n = len(users)
    columns = {
        "user_id": pa.array(users),
        "date": pa.array(days).cast(pa.date32()),
        "metric": pa.array(["heart_rate"] * n),
        "ts": pa.array(days.astype(np.int64) * 86_400_000_000).cast(schema.field("ts").type),
        "count": pa.array(np.full(n, 1440, np.int64)),
        "sum": pa.array(np.full(n, 1440 * 70.0)),
        "min": pa.array(np.full(n, 50.0)),
        "max": pa.array(np.full(n, 120.0)),
    }
    return pa.Table.from_arrays([columns[f.name].cast(f.type) for f in schema], schema=schema)


def _one_day(table: str) -> pa.Table:
    """One row of participant 1 on the first day, in `table`'s schema."""
    schema = data_schema(table)
    values = {
        "user_id": 1,
        "date": FIRST,
        "metric": "heart_rate",
        "ts": np.datetime64(FIRST.isoformat(), "us").astype(np.int64),
        "value": 70.0,
        "count": 1,
        "sum": 70.0,
        "min": 70.0,
        "max": 70.0,
    }
    arrays = []
    for f in schema:
        source = pa.array([values[f.name]])
        arrays.append(
            source.cast(pa.int64()).cast(f.type) if f.name == "ts" else source.cast(f.type)
        )
    return pa.Table.from_arrays(arrays, schema=schema)


def build(home: Path) -> tuple[str, Path]:
    server_url = database_url(None, home)
    url = server_url.rsplit("/", 1)[0] + f"/{DATABASE}"
    lake_path = home / "lake"
    marker = home / "built"
    if marker.exists():
        init_schema(url)  # a newer stratum's migrations, if any
        return url, lake_path
    admin = server_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    init_schema(url)
    started = time.perf_counter()
    rows = _daily_rows()
    pairs = [(u, FIRST + timedelta(days=d)) for u in range(1, USERS + 1) for d in range(DAYS)]
    lake = Lake(lake_path)
    versions = {"agg_1d": lake.replace_days("agg_1d", rows, pairs)}
    for table in TABLES[:-1]:  # the finer tables exist (one participant-day each)
        one_day = _one_day(table)
        versions[table] = lake.replace_days(table, one_day, [(1, FIRST)])
    with psycopg.connect(url) as conn:
        params = {
            "users": USERS,
            "first": FIRST,
            "last": LAST,
            "tiered_before": LAST - timedelta(days=TIERED_AFTER_DAYS),
        }
        conn.execute(_DAY_STATE, params)
        conn.execute("SELECT setval('day_change_seq', (SELECT max(change_seq) FROM day_state))")
        for table, version in versions.items():
            conn.execute(_LAKE_DAYS, {"version": version, "tables": [table]})
        conn.execute("SELECT nextval('catalog_seq')")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    print(f"built the cohort catalog in {time.perf_counter() - started:.0f} s")
    marker.write_text("built\n")
    return url, lake_path


def _reverify(url: str, user_id: int, day: date) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(_REVERIFY, {"user": user_id, "day": day})
        conn.execute("SELECT nextval('catalog_seq')")


def _loads(engine: Engine) -> int:
    """Participants the engine loaded so far (0 for an engine that does not count them)."""
    return int(getattr(engine.catalogs, "loads", 0))


def measure(url: str, lake_path: Path, home: Path) -> dict[str, float]:
    settings = load_settings(
        {
            "STRATUM_HOME": str(home),
            "STRATUM_LAKE_PATH": str(lake_path),
            "STRATUM_MAX_USERS": "1000",
            # The lake's file list is part of planning what the lake holds: measure it.
            "STRATUM_WARM_ROLLUP_ROWS": "0",
        }
    )
    engine = Engine(settings, url)
    try:
        engine.preload()

        def query(users: str) -> DataQuery:
            return build_query(
                {
                    "user_id": [users],
                    "metric": ["heart_rate"],
                    "start": [(LAST - timedelta(days=364)).isoformat()],
                    "end": [(LAST + timedelta(days=1)).isoformat()],
                    "resolution": ["1d"],
                },
                engine.settings.query,
                principal=LOCAL_ADMIN,
            )

        one = query("1")
        plan = engine.plan(one)  # warm-up
        assert any(s.backend == "lake" for s in plan.segments), plan.segments
        figures: dict[str, float] = {}
        figures["1 participant, steady"] = median_ms(lambda: engine.plan(one), REPEATS)
        other: list[float] = []
        own: list[float] = []
        loads = {"other": 0, "own": 0}
        for i in range(CHANGED_REPEATS):
            _reverify(url, 2 + i % (USERS - 1), FIRST + timedelta(days=i))
            before = _loads(engine)
            other.append(elapsed_ms(lambda: engine.plan(one)))
            loads["other"] += _loads(engine) - before
            _reverify(url, 1, FIRST + timedelta(days=i))
            before = _loads(engine)
            own.append(elapsed_ms(lambda: engine.plan(one)))
            loads["own"] += _loads(engine) - before
        print(f"participants loaded in {CHANGED_REPEATS} queries each: {loads}")
        figures["1 participant, after another participant's change"] = statistics.median(other)
        figures["1 participant, after its own change"] = statistics.median(own)
        everyone = query(",".join(map(str, range(1, USERS + 1))))
        figures[f"all {USERS} participants, steady"] = median_ms(
            lambda: engine.plan(everyone), CHANGED_REPEATS
        )
        changed = []
        for i in range(CHANGED_REPEATS):
            _reverify(url, 2 + i, LAST - timedelta(days=i))
            changed.append(elapsed_ms(lambda: engine.plan(everyone)))
        figures[f"all {USERS} participants, after one participant's change"] = statistics.median(
            changed
        )
        return figures
    finally:
        engine.close()


def main(argv: list[str]) -> None:
    home = Path(argv[1] if len(argv) > 1 else ".stratum-bench-catalog").resolve()
    home.mkdir(parents=True, exist_ok=True)
    try:
        url, lake_path = build(home)
        for name, ms in measure(url, lake_path, home).items():
            print(f"catalog + plan, {name}: {ms:.2f} ms")
    finally:
        stop_local_postgres(home)


if __name__ == "__main__":
    main(sys.argv)
