"""The TimescaleDB code paths on a real TimescaleDB server (and their plain twins).

`db init` makes hypertables where the extension runs and plain tables where it does not;
an existing plain database migrates in place; tiering drops whole chunks only when every
(user, day) in them may go; an ingest into a dropped range rehydrates it from the lake.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from api.cli import main
from engine.errors import ConfigurationError
from lake import Lake
from sync import schema, timescale
from sync.rollups import refresh_rollups
from sync.schema import init_schema
from tests.conftest import Servers, installed_flavours
from tests.sync.lakesync import (
    FIRST_DAY,
    TODAY,
    assert_lake_equals_source,
    ingest_rows,
    load_cohort,
    make_lake,
    run_sync,
    source_stats,
)
from tests.sync.test_tiering import CHANGED, tier, warm_rows

needs_timescaledb = pytest.mark.skipif(
    "timescaledb" not in installed_flavours(), reason="TimescaleDB is not installed here"
)


def chunk_days(url: str, table: str) -> list[date]:
    """The first day of every chunk of `table` (chunks are one day long)."""
    with psycopg.connect(url) as conn:
        ranges = timescale.chunk_ranges(conn, table, datetime(2100, 1, 1, tzinfo=UTC))
    return [start.astimezone(UTC).date() for _, start, _ in ranges]


@pytest.fixture
def empty_database(pg_servers: Servers, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database without stratum's schema on the server of the flavour given by `param`."""
    server = pg_servers.get(request.param)
    name = f"e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url_for("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield server.url_for(name)
    pg_servers.drop_database(server.url_for(name))


def test_db_init_makes_hypertables_only_on_timescaledb(flavour: str, flavour_url: str) -> None:
    result = init_schema(flavour_url)  # again: idempotent
    with psycopg.connect(flavour_url) as conn:
        enabled = timescale.enabled(conn)
        hypertables = timescale.hypertable_names(conn) if enabled else []
    assert (result.timescaledb, enabled) == (flavour == "timescaledb",) * 2
    expected = sorted(timescale.HYPERTABLES) if flavour == "timescaledb" else []
    assert hypertables == result.hypertables == expected


def index_names(url: str) -> set[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename, indexname FROM pg_indexes WHERE tablename = ANY(%s)",
            (list(timescale.HYPERTABLES),),
        ).fetchall()
    return {(table, index) for table, index in rows}


def test_the_warm_tables_keep_only_their_primary_key(flavour: str, flavour_url: str) -> None:
    # TimescaleDB's default (ts DESC) index cost writes and bytes (9%) and served no query:
    # every read and write goes by (user_id, metric, ts). Databases that have it lose it.
    primary_keys = {(table, f"{table}_pkey") for table in timescale.HYPERTABLES}
    assert index_names(flavour_url) == primary_keys
    if flavour == "timescaledb":
        with psycopg.connect(flavour_url, autocommit=True) as conn:
            conn.execute("CREATE INDEX raw_data_ts_idx ON raw_data (ts DESC)")  # as made before
        init_schema(flavour_url)
        assert index_names(flavour_url) == primary_keys


@needs_timescaledb
@pytest.mark.parametrize("empty_database", ["timescaledb"], indirect=True)
def test_a_plain_database_migrates_to_hypertables_with_its_rows(empty_database: str) -> None:
    url = empty_database
    with psycopg.connect(url, autocommit=True) as conn:  # made before TimescaleDB was there
        conn.execute(f"ALTER DATABASE \"{url.rsplit('/', 1)[1]}\" SET stratum.timescaledb = 'off'")
    assert init_schema(url).timescaledb is False
    load_cohort(url, days=3)
    before = {tier: source_stats(url, tier) for tier in ("raw", "agg_1m", "agg_1h")}

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" RESET stratum.timescaledb')
    result = init_schema(url)
    assert result.timescaledb and result.hypertables == sorted(timescale.HYPERTABLES)
    assert {tier: source_stats(url, tier) for tier in before} == before
    assert chunk_days(url, "raw_data") == [FIRST_DAY + timedelta(days=i) for i in range(3)]
    ingest_rows(url, [(f"{FIRST_DAY}T00:00:00.25Z", 1, "heart_rate", 61.0)])  # still writable
    assert source_stats(url, "raw")[(1, FIRST_DAY)][0] == before["raw"][(1, FIRST_DAY)][0] + 1


@needs_timescaledb
@pytest.mark.parametrize("empty_database", ["postgresql"], indirect=True)
def test_installed_but_not_loaded_is_a_clear_error(
    empty_database: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The plain server has the extension's files but does not preload it; without its
    # `stratum.timescaledb = off` it stands for an external server configured half-way.
    name = empty_database.rsplit("/", 1)[1]
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{name}\" SET stratum.timescaledb = 'on'")
    with pytest.raises(ConfigurationError, match="shared_preload_libraries = 'timescaledb'"):
        init_schema(empty_database)

    monkeypatch.setenv("STRATUM_DATABASE_URL", empty_database)
    assert main(["db", "init"]) == 2
    err = capsys.readouterr().err
    assert "shared_preload_libraries" in err and "closed" not in err


@needs_timescaledb
@pytest.mark.parametrize("flavour", ["timescaledb"])
def test_tiering_drops_whole_chunks_and_keeps_those_with_untiered_days(
    flavour: str, flavour_url: str, tmp_path: Path
) -> None:
    # 2 users x 5 days, synced: one chunk per day and table (every 30 s, so the 1m buckets
    # are stored rows; a per-minute series stores none)
    url = flavour_url
    load_cohort(url, every=30)
    lake = make_lake(tmp_path)
    run_sync(url, lake)
    days = [FIRST_DAY + timedelta(days=i) for i in range(5)]
    assert chunk_days(url, "raw_data") == chunk_days(url, "data_1m_stored") == days
    ingest_rows(url, [(f"{CHANGED}T10:00:00Z", 1, "heart_rate", 80.0)])  # user 1 changed

    result = tier(url, lake)

    # The days before the horizon (TODAY - 1) go, but CHANGED's chunk holds user 1's
    # changed day: it stays, and only user 2's rows leave it, row by row.
    kept = [CHANGED, TODAY - timedelta(days=1)]
    assert chunk_days(url, "raw_data") == chunk_days(url, "data_1m_stored") == kept
    assert result.chunks == 2 * (len(days) - len(kept))
    assert result.days == 2 * 3 + 1
    assert warm_rows(url, "raw_data", 1, CHANGED) > 0
    assert warm_rows(url, "raw_data", 2, CHANGED) == 0
    assert tier(url, lake).chunks == 0  # idempotent


@needs_timescaledb
@pytest.mark.parametrize("flavour", ["timescaledb"])
def test_an_ingest_into_a_dropped_chunk_rehydrates_the_day(
    flavour: str, flavour_url: str, lake: Lake
) -> None:
    url = flavour_url
    full = source_stats(url, "raw")[(2, FIRST_DAY)]
    tier(url, lake)
    assert FIRST_DAY not in chunk_days(url, "raw_data")

    ingest_rows(url, [(f"{FIRST_DAY}T23:59:59.5Z", 2, "heart_rate", 99.0)])

    assert FIRST_DAY in chunk_days(url, "raw_data")  # the range exists again
    assert warm_rows(url, "raw_data", 2, FIRST_DAY) == full[0] + 1
    assert warm_rows(url, "raw_data", 1, FIRST_DAY) == 0  # only the written day comes back
    refresh_rollups(url)
    assert run_sync(url, lake).days == 1
    assert_lake_equals_source(url, lake, before=FIRST_DAY + timedelta(days=1))
    tier(url, lake)
    assert FIRST_DAY not in chunk_days(url, "raw_data")  # and it goes again, whole


@pytest.mark.parametrize("empty_database", installed_flavours(), indirect=True)
def test_a_database_made_before_per_minute_records_keeps_its_1m_rows(
    empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Migration 013 renames data_1m (a hypertable on TimescaleDB, maybe compressed) to
    # data_1m_stored and puts the data_1m view in its place: no row may be lost or doubled.
    url = empty_database
    with monkeypatch.context() as before_013:
        older = [m for m in schema.migration_files() if m[0] < 13]
        before_013.setattr(schema, "migration_files", lambda: older)
        before_013.setattr(timescale, "HYPERTABLES", ("raw_data", "data_1m"))
        made = init_schema(url)
    moment = datetime(2024, 1, 2, 3, 4, tzinfo=UTC)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO data_1m (ts, user_id, metric, count, sum, min, max) "
            "VALUES (%s, 1, 'heart_rate', 2, 121.0, 60.0, 61.0)",
            (moment,),
        )
        if made.timescaledb:
            for (chunk,) in conn.execute("SELECT show_chunks('data_1m')").fetchall():
                conn.execute("SELECT compress_chunk(%s)", (chunk,))

    result = init_schema(url)

    assert result.applied[0] == "013_minute_series.sql"  # and those after it
    assert result.hypertables == (sorted(timescale.HYPERTABLES) if made.timescaledb else [])
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT ts, user_id, metric, count, sum, min, max FROM data_1m")
        assert rows.fetchall() == [(moment, 1, "heart_rate", 2, 121.0, 60.0, 61.0)]
    assert index_names(url) == {(t, f"{t}_pkey") for t in timescale.HYPERTABLES}
