"""Timing of local-calendar answers (issue 14, point 4): not a test, never asserted.

    python -m benchmarks.local_calendar [HOME]

Builds (once, in HOME, default .stratum-bench-local) 10 participants x 1 year of steps per
minute, rolled up and synced to the lake, then times engine.run for daily answers in UTC,
in a whole-hour zone (America/New_York: the 1h tier is exact), in half- and quarter-hour
zones (Asia/Kolkata, Asia/Kathmandu: the 1m tier), and tz=local with a mid-year move, plus
weeks and months. Prints the median of repeated runs after a warm-up. The private
PostgreSQL it starts is stopped at the end.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa

from engine.access import LOCAL_ADMIN
from engine.query import build_query
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
CASES = {
    "UTC daily": {"resolution": "1d"},
    "America/New_York daily": {"resolution": "1d", "tz": "America/New_York"},
    "Asia/Kolkata daily": {"resolution": "1d", "tz": "Asia/Kolkata"},
    "Asia/Kathmandu daily": {"resolution": "1d", "tz": "Asia/Kathmandu"},
    "tz=local daily (moves)": {"resolution": "1d", "tz": "local"},
    "UTC weekly": {"resolution": "1w"},
    "tz=local monthly": {"resolution": "1mo", "tz": "local"},
}


def build(home: Path) -> str:
    settings = load_settings({"STRATUM_HOME": str(home)})
    url = database_url(None, settings.database.home)
    marker = home / "built"
    if marker.exists():
        return url
    init_schema(url)
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


def time_case(engine: Engine, params: dict[str, str]) -> tuple[float, int, str]:
    text = {
        "user_id": ",".join(str(u) for u in range(1, USERS + 1)),
        "metric": "steps",
        "start": "2024-01-01",
        "end": "2025-01-01",
        "page_size": "0",
        **params,
    }
    query = build_query(
        {k: [v] for k, v in text.items()}, engine.settings.query, principal=LOCAL_ADMIN
    )
    plan = engine.plan(query)
    tier = plan.calendar["tier"] if plan.calendar else plan.resolution
    samples = []
    rows = 0
    for attempt in range(REPEATS + 2):
        began = time.perf_counter()
        answer = engine.run(query)
        rows = pa.Table.from_batches(list(answer.batches), schema=answer.schema).num_rows
        if attempt >= 2:  # the first runs warm the catalog and the file checks
            samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1e3, rows, f"{tier} from {'+'.join(plan.sources)}"


def main(argv: list[str]) -> int:
    home = Path(argv[0] if argv else ".stratum-bench-local").resolve()
    home.mkdir(parents=True, exist_ok=True)
    try:
        url = build(home)
        engine = Engine(load_settings({"STRATUM_HOME": str(home)}), url)
        try:
            print(f"{USERS} participants x 1 year of steps per minute; median of {REPEATS}")
            for name, params in CASES.items():
                ms, rows, source = time_case(engine, params)
                print(f"{name:28} {ms:8.1f} ms  {rows:6,} rows  ({source})", flush=True)
        finally:
            engine.close()
    finally:
        stop_local_postgres(home)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
