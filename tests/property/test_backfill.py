"""Backfill then query == ingest + aggregate + sync (+ tier) then query, for random data, files,
batch sizes, spans and resolutions; and both equal the buckets computed from the raw rows."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.run import Engine
from engine.settings import load_settings
from lake import Lake
from sync.backfill import backfill_files
from sync.export import sync_to_lake
from sync.ingest import ingest_tables
from sync.rollups import refresh_rollups
from sync.tiering import tier_warm_store
from tests.conftest import Servers, primary_flavour
from tests.property.rows import raw_table
from tests.property.test_hybrid import BASE, SPAN_S, USERS, answer, expected

# Rows anywhere in the span, or bunched in a few minutes (so buckets hold several rows and
# count, sum, min and max differ), some on either side of a UTC midnight.
_ANCHORS = [0, 3_000, 86_400 - 100, 2 * 86_400 + 50_000, 3 * 86_400 + 80_000]
offset = st.one_of(
    st.integers(0, SPAN_S - 1),
    st.builds(lambda a, j: min(a + j, SPAN_S - 1), st.sampled_from(_ANCHORS), st.integers(0, 200)),
)
sample = st.tuples(
    st.sampled_from(USERS),
    st.sampled_from(["heart_rate", "steps"]),
    offset,
    st.integers(0, 200).map(float),  # integral values: sums are exact in any order
)

TODAY = date(2024, 5, 1)  # every generated day is older than the 30-day horizon
TABLES = (
    "raw_data, data_1m_stored, raw_minute_days, data_1h, data_1d, day_state, day_counts, "
    "lake_days, lake_files, "
    "lake_damage, lake_location, sync_runs"
)


@pytest.fixture
def two_urls(pg_servers: Servers) -> Iterator[tuple[str, str]]:
    urls = (
        pg_servers.fresh_database(primary_flavour()),
        pg_servers.fresh_database(primary_flavour()),
    )
    yield urls
    for url in urls:
        pg_servers.drop_database(url)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(sample, min_size=1, max_size=80),
    split_user=st.sampled_from(USERS),  # users below it go to a first file, the rest a second
    batch_rows=st.integers(1, 100),
    tier=st.booleans(),
    window=st.tuples(st.integers(0, SPAN_S), st.integers(1, SPAN_S)),
    resolution=st.sampled_from(["raw", "1m", "1h", "1d"]),
)
def test_backfill_answers_as_ingest_aggregate_sync(
    two_urls: tuple[str, str],
    rows: list,
    split_user: int,
    batch_rows: int,
    tier: bool,
    window: tuple[int, int],
    resolution: str,
) -> None:
    backfilled, synced = two_urls
    for url in two_urls:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {TABLES}")
    lo, length = window
    start = BASE + timedelta(seconds=min(lo, SPAN_S - 1))
    end = min(start + timedelta(seconds=length), BASE + timedelta(seconds=SPAN_S))
    params = {
        "user_id": ",".join(map(str, USERS)),
        "metric": "heart_rate,steps",
        "start": start.isoformat(),
        "end": end.isoformat(),
        "resolution": resolution,
        "page_size": "0",
    }
    home = Path(tempfile.mkdtemp(prefix="stratum-backfill-"))
    try:
        files = []
        for name, part in (("a", [r for r in rows if r[0] < split_user]), ("b", rows)):
            part = [r for r in part if name == "a" or r[0] >= split_user]
            if part:
                files.append(home / f"{name}.parquet")
                pq.write_table(raw_table(part, BASE), files[-1])
        backfill_files(
            backfilled,
            Lake(home / "lake"),
            files,
            older_than_days=30,
            grace_days=1,
            today=TODAY,
            batch_rows=batch_rows,
        )

        ingest_tables(synced, [raw_table(rows, BASE)])
        refresh_rollups(synced)
        sync_to_lake(synced, Lake(home / "other"), grace_days=1, batch_days=3, today=TODAY)
        if tier:
            tier_warm_store(synced, Lake(home / "other"), older_than_days=30, today=TODAY)

        truth = {(u, m, BASE + timedelta(seconds=s)): v for u, m, s, v in rows}
        engines = [
            Engine(
                load_settings({"STRATUM_HOME": str(home / h), "STRATUM_LAKE_PATH": str(lake)}), url
            )
            for h, lake, url in (("h1", home / "lake", backfilled), ("h2", home / "other", synced))
        ]
        whole_span = {
            "start": BASE.isoformat(),
            "end": (BASE + timedelta(seconds=SPAN_S)).isoformat(),
        }
        asked = [(params, start, end, resolution)] + [
            (params | whole_span | {"resolution": r}, BASE, BASE + timedelta(seconds=SPAN_S), r)
            for r in ("raw", "1m", "1h", "1d")
        ]
        try:
            for query, first, last, level in asked:
                mine, theirs = (answer(engine, query) for engine in engines)
                assert mine == theirs == expected(truth, first, last, level), level
        finally:
            for engine in engines:
                engine.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
