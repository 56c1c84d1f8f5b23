"""Invariant 1 (one truth) and 4 (late data never stale), on a real warm store and lake.

For random data, sync watermarks, tiering, late rows, spans, resolutions and page sizes:
the hybrid answer (lake + warm store) equals the answer from the warm store alone and the
buckets computed directly from the raw rows, and concatenated pages equal the unpaged answer;
each example runs on every installed warm-store flavour (TimescaleDB, plain PostgreSQL) and
their answers are identical (invariant 10).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.access import LOCAL_ADMIN
from engine.query import build_query
from engine.run import Engine
from engine.settings import load_settings
from sync.columnstore import compress_warm_store
from sync.export import sync_to_lake
from sync.ingest import ingest_tables
from sync.rollups import refresh_rollups
from sync.tiering import tier_warm_store
from tests.conftest import Servers, installed_flavours
from tests.property.rows import raw_table

BASE = datetime(2024, 3, 9, 20, 0, tzinfo=UTC)  # five UTC days: 03-09 .. 03-13
SPAN_S = 4 * 86_400 + 4 * 3600
TODAY = date(2024, 3, 16)
USERS = (1, 2, 3)
TABLES = (
    "raw_data, data_1m_stored, raw_minute_days, data_1h, data_1d, day_state, day_counts, lake_days"
)

sample = st.tuples(
    st.sampled_from(USERS),
    st.sampled_from(["heart_rate", "steps"]),
    st.integers(0, SPAN_S - 1),
    st.integers(0, 200).map(float),  # integral values: sums are exact in any order
)


def expected(truth: dict, start: datetime, end: datetime, resolution: str) -> list[tuple]:
    """The answer computed directly from the raw rows, in answer order: raw rows in
    [start, end), or the whole buckets that start in [start, end)."""
    if resolution == "raw":
        return sorted((u, m, ts, v) for (u, m, ts), v in truth.items() if start <= ts < end)
    size = {"1m": 60, "1h": 3600, "1d": 86_400}[resolution]
    buckets: dict[tuple, list[float]] = defaultdict(list)
    for (u, m, ts), v in truth.items():
        epoch = int(ts.timestamp())
        buckets[(u, m, datetime.fromtimestamp(epoch - epoch % size, UTC))].append(v)
    return sorted(
        (u, m, ts, len(vs), math.fsum(vs), min(vs), max(vs))
        for (u, m, ts), vs in buckets.items()
        if start <= ts < end
    )


def answer(engine: Engine, params: dict[str, str]) -> list[tuple]:
    result = engine.run(
        build_query(
            {k: [v] for k, v in params.items()}, engine.settings.query, principal=LOCAL_ADMIN
        )
    )
    table = pa.Table.from_batches(list(result.batches), schema=result.schema)
    columns = [c for c in table.column_names if c != "avg"]
    return [tuple(r[c] for c in columns) for r in table.to_pylist()]


@pytest.fixture
def flavour_urls(pg_servers: Servers) -> Iterator[dict[str, str]]:
    """A fresh database on every installed warm-store flavour."""
    urls = {flavour: pg_servers.fresh_database(flavour) for flavour in installed_flavours()}
    yield urls
    for url in urls.values():
        pg_servers.drop_database(url)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=st.lists(sample, min_size=1, max_size=80),
    late=st.lists(sample, max_size=20),
    grace=st.integers(2, 7),  # days left out of the lake: 2 exports all, 7 none
    tier_after=st.one_of(st.none(), st.integers(3, 7)),
    compress=st.booleans(),  # TimescaleDB: late rows then land in compressed chunks
    refresh_late=st.booleans(),
    sync_late=st.booleans(),
    window=st.tuples(st.integers(0, SPAN_S), st.integers(1, SPAN_S)),
    resolution=st.sampled_from(["raw", "1m", "1h", "1d"]),
    page_size=st.integers(1, 40),
)
def test_hybrid_equals_warm_only_and_raw(
    flavour_urls: dict[str, str],
    first: list,
    late: list,
    grace: int,
    tier_after: int | None,
    compress: bool,
    refresh_late: bool,
    sync_late: bool,
    window: tuple[int, int],
    resolution: str,
    page_size: int,
) -> None:
    lo, length = window
    start = BASE + timedelta(seconds=min(lo, SPAN_S - 1))
    end = min(start + timedelta(seconds=length), BASE + timedelta(seconds=SPAN_S))
    scenario = Scenario(first, late, grace, tier_after, compress, refresh_late, sync_late)
    answers = {
        flavour: scenario.run(url, start, end, resolution, page_size)
        for flavour, url in flavour_urls.items()
    }
    # Invariant 10: TimescaleDB and plain PostgreSQL give identical answers.
    assert len(set(map(tuple, answers.values()))) == 1, answers.keys()


@dataclass(frozen=True)
class Scenario:
    """Deliveries, syncs and tiering of one example, replayed on one warm store."""

    first: list
    late: list
    grace: int
    tier_after: int | None
    compress: bool
    refresh_late: bool
    sync_late: bool

    def run(
        self, warm_url: str, start: datetime, end: datetime, resolution: str, page_size: int
    ) -> list[tuple]:
        """The whole hybrid answer, checked against raw, warm-only and the pages."""
        with psycopg.connect(warm_url, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {TABLES}")
        home = Path(tempfile.mkdtemp(prefix="stratum-hybrid-"))
        truth: dict[tuple[int, str, datetime], float] = {}

        def deliver(rows: list) -> None:
            if rows:
                ingest_tables(warm_url, [raw_table(rows, BASE)])
            for u, m, s, v in rows:
                truth[(u, m, BASE + timedelta(seconds=s))] = v

        deliver(self.first)
        refresh_rollups(warm_url)
        # The lake wherever it holds the days (small answers otherwise come from the warm store
        # while it holds them too: `routed`, the default, is checked against the same truth).
        lake_first = load_settings({"STRATUM_HOME": str(home), "STRATUM_WARM_ROLLUP_ROWS": "0"})
        hybrid = Engine(lake_first, warm_url)
        routed = Engine(load_settings({"STRATUM_HOME": str(home)}), warm_url)
        warm_only = Engine(load_settings({"STRATUM_HOME": str(home / "no-lake")}), warm_url)
        try:
            sync_to_lake(warm_url, hybrid.lake, grace_days=self.grace, batch_days=3, today=TODAY)
            if self.tier_after is not None:
                tier_warm_store(warm_url, hybrid.lake, older_than_days=self.tier_after, today=TODAY)
            if self.compress:  # every chunk left, to the columnstore
                compress_warm_store(warm_url, datetime(2100, 1, 1, tzinfo=UTC))
            deliver(self.late)  # late rows, possibly into synced or tiered days
            if self.refresh_late:
                refresh_rollups(warm_url)
                if self.sync_late:
                    sync_to_lake(
                        warm_url, hybrid.lake, grace_days=self.grace, batch_days=3, today=TODAY
                    )

            params = {
                "user_id": "1,2,3",
                "metric": "heart_rate,steps",
                "start": start.isoformat(),
                "end": end.isoformat(),
                "resolution": resolution,
            }
            query = build_query(
                {k: [v] for k, v in params.items()}, hybrid.settings.query, principal=LOCAL_ADMIN
            )
            event(f"sources: {'+'.join(hybrid.plan(query).sources)}")
            whole = answer(hybrid, {**params, "page_size": "0"})
            assert whole == expected(truth, start, end, resolution)
            assert answer(routed, {**params, "page_size": "0"}) == whole
            if self.tier_after is None:  # the warm store still holds every row
                assert whole == answer(warm_only, {**params, "page_size": "0"})
            pages: list[tuple] = []
            number = 1
            while len(pages) < len(whole) + page_size:
                page = answer(
                    hybrid, {**params, "page_size": str(page_size), "page_number": str(number)}
                )
                if not page:
                    break
                pages += page
                number += 1
            assert pages == whole
            return whole
        finally:
            hybrid.close()
            routed.close()
            warm_only.close()
            shutil.rmtree(home, ignore_errors=True)
