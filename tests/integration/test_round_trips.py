"""Short spans pay per round trip to the warm store (issue 13): count the statements.

On a busy machine every round trip waits for the server process to be scheduled, so the
fixed cost of a request is mostly its round trips. These tests count them, which unlike
milliseconds does not depend on load.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import pyarrow as pa
import pytest

from engine.access import LOCAL_ADMIN, hash_key
from engine.query import build_query
from engine.run import Answer, Engine
from engine.settings import load_settings
from engine.warm import WarmPool
from sync.access import add_members, create_cohort, create_key, remove_members
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.rollups import refresh_rollups

START = date(2024, 3, 1)
SPAN = {"user_id": ["1"], "metric": ["heart_rate"], "start": ["2024-03-01"], "end": ["2024-03-02"]}


class CountingConnection(psycopg.Connection[Any]):
    """A real connection that counts what is sent through `execute` (pings included)."""

    sent: list[str] = []

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        type(self).sent.append(str(query)[:40])
        return super().execute(query, *args, **kwargs)


class RecordingWarmPool(WarmPool):
    """The warm executor's real pool, keeping the parameters each statement binds."""

    bound: list[tuple[Any, ...]] = []

    def fetch(self, sql: str, params: tuple[Any, ...]) -> pa.Table:
        self.bound.append(params)
        return super().fetch(sql, params)


@pytest.fixture
def engine(warm_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    ingest_tables(warm_url, generate_cohort(1, 2, START, seed=3, metrics=["heart_rate"]))
    refresh_rollups(warm_url)
    settings = load_settings({"STRATUM_HOME": str(tmp_path), "STRATUM_MEMORY_BUDGET": "1GiB"})
    engine = Engine(settings, warm_url)
    engine._pool = psycopg_pool.ConnectionPool(
        warm_url,
        min_size=0,
        max_size=2,
        open=True,
        connection_class=CountingConnection,
        kwargs={"autocommit": True},
    )
    engine._warm = RecordingWarmPool(warm_url, 2)
    CountingConnection.sent.clear()
    RecordingWarmPool.bound.clear()
    yield engine
    engine.close()


def run(engine: Engine, resolution: str, **paging: list[str]) -> tuple[Answer, int]:
    query = build_query(
        {**SPAN, "resolution": [resolution], **paging},
        engine.settings.query,
        principal=LOCAL_ADMIN,
    )
    answer = engine.run(query)
    rows = sum(batch.num_rows for batch in answer.batches)
    return answer, rows


def test_a_warm_span_costs_one_catalog_statement_and_its_fetch(engine: Engine) -> None:
    run(engine, "raw")  # loads the lake coverage of this catalog generation
    run(engine, "raw")  # too long for one statement (engine/direct.py): found out once
    CountingConnection.sent.clear()
    answer, rows = run(engine, "raw")
    assert rows > 0
    # Coverage cached: the generation and the fresh days in one statement, and no ping
    # before it (a dead pooled connection is found by that statement itself).
    assert len(CountingConnection.sent) == 1, CountingConnection.sent
    assert answer.times.counts == {"warm_statements": 2}  # the catalog, then one fetch
    assert {"catalog", "plan", "check_files", "warm_fetch", "merge"} <= set(answer.times.ms)


@pytest.mark.parametrize(("resolution", "paging"), [("1h", {}), ("raw", {"page_size": ["100"]})])
def test_a_small_warm_answer_costs_one_statement(
    engine: Engine, resolution: str, paging: dict[str, list[str]]
) -> None:
    run(engine, resolution, **paging)  # loads the catalog of the participant
    RecordingWarmPool.bound.clear()
    answer, rows = run(engine, resolution, **paging)
    assert rows > 0
    assert answer.times.counts == {"warm_statements": 1}
    assert not RecordingWarmPool.bound  # no catalog statement, no ADBC fetch


def test_warm_fetches_bind_no_time_zone_aware_timestamps(engine: Engine) -> None:
    """A bound timestamptz makes the ADBC driver wrap each statement in BEGIN, read and set
    the session time zone and restore it: seven round trips instead of two."""
    run(engine, "raw")
    run(engine, "1h")
    moments = [p for params in RecordingWarmPool.bound for p in params if isinstance(p, datetime)]
    assert moments and all(moment.tzinfo is None for moment in moments)


def test_a_deep_page_counts_the_statements_that_locate_it(engine: Engine) -> None:
    run(engine, "raw")
    CountingConnection.sent.clear()
    answer, rows = run(engine, "raw", page_size=["100"], page_number=["20"])
    assert rows == 100
    # The catalog, the series' totals and the days of the series the page starts in (no
    # ping first), then one fetch.
    assert len(CountingConnection.sent) == 3, CountingConnection.sent
    assert answer.times.counts == {"warm_statements": 4}
    assert "locate_page" in answer.times.ms


def test_a_key_of_cohorts_is_checked_in_one_statement(engine: Engine, warm_url: str) -> None:
    """Its participants come with the key (they used to take a second round trip per
    request), as they are at each request: a change of membership acts at once."""
    create_cohort(warm_url, "pair", [1, 2])
    create_cohort(warm_url, "third", [3])
    key_text = create_key(
        warm_url,
        "pair-key",
        admin=False,
        cohorts=("pair", "third"),
        metrics=["heart_rate"],
        expires_in=None,
    )
    CountingConnection.sent.clear()
    principal = engine.authenticate(key_text)
    assert len(CountingConnection.sent) == 1, CountingConnection.sent
    assert (principal.name, principal.admin) == ("pair-key", False)
    assert principal.users == {1, 2, 3} and principal.metrics == {"heart_rate"}
    remove_members(warm_url, "pair", [2])
    add_members(warm_url, "third", [4])
    assert engine.authenticate(key_text).users == {1, 3, 4}
    remove_members(warm_url, "third", [3, 4])
    remove_members(warm_url, "pair", [1])
    assert engine.authenticate(key_text).users == frozenset()
    admin = create_key(warm_url, "all", admin=True, cohorts=(), metrics=None, expires_in=None)
    assert engine.authenticate(admin).users is None
    assert set(engine._principals) == {hash_key(key_text), hash_key(admin)}


def test_small_reads_never_start_parallel_workers(warm_url: str, tmp_path: Path) -> None:
    """The pooled connections serve small reads only: a fresh `small` bench planned one
    participant-day of 1m in parallel, 16.9 ms against 1.5 ms of work (issue 13)."""
    engine = Engine(load_settings({"STRATUM_HOME": str(tmp_path)}), warm_url)
    try:
        with engine._connection() as conn:
            assert conn is not None
            assert conn.execute("SHOW max_parallel_workers_per_gather").fetchone() == ("0",)
    finally:
        engine.close()
