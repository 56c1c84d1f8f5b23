"""Issue 13, point 1: a lake answer is begun on the cached catalog while the warm store is
asked for the fresh one (engine/run.py, `_run_guessed`). DuckDB reads while the catalog
statement is in flight; the rows are answered only if the fresh catalog plans the same, and
dropped otherwise (a day written since its sync is read from the warm store). Real
PostgreSQL (both flavours), real Delta."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from engine.access import LOCAL_ADMIN
from engine.query import build_query
from engine.run import Answer, Engine
from engine.settings import load_settings
from lake import Lake
from tests.sync.lakesync import FIRST_DAY, ingest_rows, load_cohort, run_sync

DAY = FIRST_DAY + timedelta(days=1)  # in the lake
START = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
END = START + timedelta(days=2)


@pytest.fixture
def engine(flavour_url: str, tmp_path: Path) -> Iterator[Engine]:
    load_cohort(flavour_url, users=2)
    lake = Lake(tmp_path / "lake")
    run_sync(flavour_url, lake)
    settings = load_settings(
        {
            "STRATUM_HOME": str(tmp_path / "home"),
            "STRATUM_LAKE_PATH": str(lake.root),
            # The lake wherever it holds the days: no one-statement warm answer.
            "STRATUM_WARM_ROLLUP_ROWS": "0",
        }
    )
    engine = Engine(settings, flavour_url)
    yield engine
    engine.close()


def run(engine: Engine) -> tuple[Answer, list[dict[str, Any]]]:
    params = {
        "user_id": ["1"],
        "metric": ["heart_rate"],
        "start": [START.isoformat()],
        "end": [END.isoformat()],
        "resolution": ["raw"],
        "page_size": ["0"],
    }
    answer = engine.run(build_query(params, engine.settings.query, principal=LOCAL_ADMIN))
    rows = pa.Table.from_batches(list(answer.batches), schema=answer.schema).to_pylist()
    return answer, rows


def truth(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT user_id, metric, ts, value FROM raw_data WHERE user_id = 1 "
            "AND metric = 'heart_rate' AND ts >= %s AND ts < %s ORDER BY ts",
            (START, END),
        ).fetchall()
    return [dict(zip(("user_id", "metric", "ts", "value"), row, strict=True)) for row in found]


def test_the_lake_is_read_while_the_catalog_statement_waits(
    engine: Engine, flavour_url: str
) -> None:
    run(engine)  # participant 1's catalog cached, its files verified
    first_rows = threading.Event()
    stream = engine._stream

    def watched(*args: Any, **kwargs: Any) -> Iterator[pa.RecordBatch]:
        for batch in stream(*args, **kwargs):
            first_rows.set()
            yield batch

    engine._stream = watched  # type: ignore[method-assign]
    answered: list[list[dict[str, Any]]] = []
    with psycopg.connect(flavour_url) as blocker:
        # The catalog statement reads day_state: it waits for this lock.
        blocker.execute("LOCK TABLE day_state IN ACCESS EXCLUSIVE MODE")
        runner = threading.Thread(target=lambda: answered.append(run(engine)[1]))
        runner.start()
        read_meanwhile = first_rows.wait(timeout=30)
        blocker.rollback()
    runner.join(timeout=60)
    assert read_meanwhile, "the lake was not read before the catalog statement returned"
    assert answered and answered[0] == truth(flavour_url)


def test_a_guess_the_fresh_catalog_does_not_confirm_is_dropped(
    engine: Engine, flavour_url: str
) -> None:
    _, before = run(engine)  # cached: the next answer is guessed from the lake alone
    late = (START + timedelta(hours=3, seconds=30)).isoformat()
    ingest_rows(flavour_url, [(late, 1, "heart_rate", 250.0)])  # the day is now unsynced
    answer, rows = run(engine)
    assert answer.times.counts.get("guess_dropped") == 1, answer.times.describe()
    assert "warm" in answer.plan.sources
    assert len(rows) == len(before) + 1
    assert rows == truth(flavour_url)


def test_a_confirmed_guess_is_answered_from_the_lake(engine: Engine, flavour_url: str) -> None:
    run(engine)
    answer, rows = run(engine)
    assert answer.plan.sources == ["lake"]
    assert "guess_dropped" not in answer.times.counts
    assert rows == truth(flavour_url)
