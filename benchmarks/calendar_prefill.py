"""What the nightly calendar prefill costs against the history it sits on (issue 14, point 4):
not a test, never asserted.

    python -m benchmarks.calendar_prefill [HOME] [DAYS]

For DAYS (default 91) and twice as many days of history, each in a private PostgreSQL and
lake built afresh under HOME (default .stratum-bench-prefill): 10 participants' steps per
minute, half in Kolkata and half in New York, rolled up and synced; the first prefill (the
whole history, from an empty cache); then one night: a new day for every participant and a
late row into a day half the history back, rolled up and synced, and the nightly prefill
(STRATUM_CALENDAR_PREFILL=local) timed, with what it computed; then the first tz=local daily
answer over the whole history. The servers are stopped at the end.
"""

from __future__ import annotations

import shutil
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from engine.access import LOCAL_ADMIN
from engine.calendarprefill import PrefillResult, prefill_calendar
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

USERS, START = 10, date(2024, 1, 1)
ZONES = ("local",)


def late_row(user_id: int, at: datetime) -> pa.Table:
    return pa.table(
        {
            "ts": pa.array([at], pa.timestamp("us", tz="UTC")),
            "user_id": pa.array([user_id], pa.int32()),
            "metric": ["steps"],
            "value": [5000.0],
        }
    )


def first_answer_ms(engine: Engine, days: int) -> tuple[float, object]:
    text = {
        "user_id": ",".join(str(u) for u in range(1, USERS + 1)),
        "metric": "steps",
        "resolution": "1d",
        "tz": "local",
        "start": START.isoformat(),
        "end": (START + timedelta(days=days + 1)).isoformat(),
        "page_size": "0",
    }
    query = build_query(
        {k: [v] for k, v in text.items()}, engine.settings.query, principal=LOCAL_ADMIN
    )
    began = time.perf_counter()
    answer = engine.run(query)
    pa.Table.from_batches(list(answer.batches), schema=answer.schema)
    return (time.perf_counter() - began) * 1e3, (answer.plan.calendar or {}).get("cache")


def one_history(home: Path, days: int) -> tuple[PrefillResult, PrefillResult, float, object]:
    """(first prefill, nightly prefill, first answer ms, its cache counts) over `days`."""
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    settings = load_settings({"STRATUM_HOME": str(home)})
    url = database_url(None, settings.database.home)
    try:
        init_schema(url)
        ingest_tables(url, generate_cohort(USERS, days, START, metrics=["steps"], every_s=60))
        refresh_rollups(url)
        record(
            url,
            [
                ZoneChange(u, DAWN, "Asia/Kolkata" if u % 2 else "America/New_York")
                for u in range(1, USERS + 1)
            ],
        )
        engine = Engine(settings, url)
        try:
            today = START + timedelta(days=days + 1)
            sync_to_lake(url, engine.lake, grace_days=1, batch_days=days, today=today)
            first = prefill_calendar(engine, url, ZONES)
            # The night: a new day for everyone, and a late row half the history back.
            new_day = generate_cohort(
                USERS, 1, START + timedelta(days=days), metrics=["steps"], every_s=60, seed=1
            )
            ingest_tables(url, new_day)
            back = datetime.combine(START + timedelta(days=days // 2), datetime.min.time(), UTC)
            ingest_tables(url, [late_row(1, back + timedelta(hours=20, seconds=30))])
            refresh_rollups(url)
            sync_to_lake(
                url, engine.lake, grace_days=1, batch_days=days, today=today + timedelta(days=1)
            )
            nightly = prefill_calendar(engine, url, ZONES)
            answer_ms, cache = first_answer_ms(engine, days)
        finally:
            engine.close()
    finally:
        stop_local_postgres(home)
    return first, nightly, answer_ms, cache


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else ".stratum-bench-prefill").resolve()
    history = int(argv[1]) if len(argv) > 1 else 91
    print(f"{USERS} participants, steps per minute, nightly prefill of tz=local daily")
    for days in (history, 2 * history):
        first, nightly, answer_ms, cache = one_history(root / f"days-{days}", days)
        print(
            f"history {days:4} days: first prefill {first.seconds:6.1f} s "
            f"({first.computed:,} entries, {first.requests} requests); nightly prefill "
            f"(1 new day + 1 late row) {nightly.seconds:5.2f} s ({nightly.days} participant-days, "
            f"{nightly.requests} requests, {nightly.computed} entries, {nightly.hits} hits); "
            f"first tz=local answer {answer_ms:.0f} ms (cache {cache})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
