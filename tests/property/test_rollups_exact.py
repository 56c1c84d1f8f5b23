"""Invariant 2: rollups equal buckets computed directly from raw, including after late rows."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync.columnstore import compress_warm_store
from sync.ingest import ingest_tables
from sync.rollups import refresh_rollups
from tests.property.rows import raw_table

BASE = datetime(2024, 3, 9, 22, 0, tzinfo=UTC)  # deliveries straddle UTC midnights
METRICS = ["heart_rate", "steps", "spo2"]

sample = st.tuples(
    st.integers(1, 3),  # user
    st.sampled_from(METRICS),
    st.integers(0, 3 * 86_400 - 1),  # seconds after BASE: three days, crossing midnight
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)
deliveries = st.lists(st.lists(sample, min_size=1, max_size=60), min_size=1, max_size=4)


def expected_buckets(raw: dict[tuple[int, str, datetime], float], unit: str) -> dict:
    buckets: dict[tuple, list[float]] = defaultdict(list)
    for (user, metric, ts), value in raw.items():
        if unit == "minute":
            start = ts.replace(second=0)
        elif unit == "hour":
            start = ts.replace(minute=0, second=0)
        else:
            start = ts.replace(hour=0, minute=0, second=0)
        buckets[(user, metric, start)].append(value)
    return {k: (len(v), math.fsum(v), min(v), max(v)) for k, v in buckets.items()}


def stored(conn: psycopg.Connection, table: str) -> dict:
    rows = conn.execute(f"SELECT user_id, metric, ts, count, sum, min, max FROM {table}")
    return {(u, m, ts): (c, s, lo, hi) for u, m, ts, c, s, lo, hi in rows}


def assert_same(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, (count, total, low, high) in expected.items():
        got = actual[key]
        assert (got[0], got[2], got[3]) == (count, low, high), key
        # count, min and max are exact. Sums of doubles depend on addition order, so a
        # rollup of rollups may differ from a direct sum in the last bits, never more.
        assert math.isclose(got[1], total, rel_tol=1e-9, abs_tol=1e-6), key


def assert_day_counts(conn: psycopg.Connection, raw: dict) -> None:
    expected: dict[tuple, list[set]] = defaultdict(lambda: [[], set(), set()])
    for user, metric, ts in raw:
        entry = expected[(user, metric, ts.date())]
        entry[0].append(ts)
        entry[1].add(ts.replace(second=0))
        entry[2].add(ts.replace(minute=0, second=0))
    rows = conn.execute("SELECT user_id, metric, day, rows_raw, rows_1m, rows_1h FROM day_counts")
    actual = {(u, m, d): (r, a, b) for u, m, d, r, a, b in rows}
    assert actual == {k: (len(v[0]), len(v[1]), len(v[2])) for k, v in expected.items()}


Truth = dict[tuple[int, str, datetime], float]


def deliver(
    url: str,
    conn: psycopg.Connection,
    batches: list[list[tuple]],
    refresh_between: list[bool],
    compress_between: list[bool],
) -> Truth:
    """Empty the warm store, ingest the batches (refreshing and compressing between them as
    told), refresh; the raw rows as they now stand."""
    conn.execute(
        "TRUNCATE raw_data, data_1m_stored, raw_minute_days, data_1h, data_1d, "
        "day_state, day_counts"
    )
    conn.execute("SET timezone = 'UTC'")
    truth: Truth = {}
    for batch, refresh, compress in zip(batches, refresh_between, compress_between, strict=False):
        ingest_tables(url, [raw_table(batch, BASE)])
        for user, metric, seconds, value in batch:  # later copies replace earlier ones
            truth[(user, metric, BASE + timedelta(seconds=seconds))] = value
        if refresh:  # later deliveries then land in days that were already refreshed
            refresh_rollups(url)
        if compress:  # TimescaleDB: and into compressed chunks (plain PostgreSQL: no-op)
            compress_warm_store(url, datetime(2100, 1, 1, tzinfo=UTC))
    refresh_rollups(url)
    return truth


def assert_rollups_exact(conn: psycopg.Connection, truth: Truth) -> None:
    assert_same(stored(conn, "data_1m"), expected_buckets(truth, "minute"))
    assert_same(stored(conn, "data_1h"), expected_buckets(truth, "hour"))
    assert_same(stored(conn, "data_1d"), expected_buckets(truth, "day"))
    assert_day_counts(conn, truth)
    pending = conn.execute(
        "SELECT count(*) FROM day_state WHERE change_seq > refreshed_seq"
    ).fetchone()
    assert pending == (0,)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batches=deliveries,
    refresh_between=st.lists(st.booleans(), min_size=4, max_size=4),
    compress_between=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_rollups_equal_direct_buckets(
    flavour_url: str,
    batches: list[list[tuple]],
    refresh_between: list[bool],
    compress_between: list[bool],
) -> None:
    with psycopg.connect(flavour_url, autocommit=True) as conn:
        truth = deliver(flavour_url, conn, batches, refresh_between, compress_between)
        assert_rollups_exact(conn, truth)


def test_refresh_is_idempotent(flavour_url: str) -> None:
    rows = [(1, "heart_rate", 10, 60.0), (1, "heart_rate", 70, 61.0)]
    ingest_tables(flavour_url, [raw_table(rows, BASE)])
    first = refresh_rollups(flavour_url)
    assert first.days == 1 and first.rows["data_1m"] == 2
    with psycopg.connect(flavour_url) as conn:
        before = stored(conn, "data_1m"), stored(conn, "data_1h"), stored(conn, "data_1d")
    assert refresh_rollups(flavour_url).days == 0
    with psycopg.connect(flavour_url, autocommit=True) as conn:
        conn.execute("UPDATE day_state SET refreshed_seq = 0")  # force a full rebuild
    assert refresh_rollups(flavour_url).days == 1
    with psycopg.connect(flavour_url) as conn:
        assert (stored(conn, "data_1m"), stored(conn, "data_1h"), stored(conn, "data_1d")) == before


# Per-minute series (issue 13 point 4): a (user, metric, UTC day) whose raw rows all sit on
# whole minutes stores no 1m rows; data_1m reads its raw rows as their buckets. Mostly whole
# minutes here, with rows off the minute now and then, so days move between the two forms.
on_the_minute = st.integers(0, 3 * 1440 - 1).map(lambda minute: minute * 60)
minute_sample = st.tuples(
    st.integers(1, 3),
    st.sampled_from(METRICS),
    st.one_of(on_the_minute, on_the_minute, on_the_minute, st.integers(0, 3 * 86_400 - 1)),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)
minute_deliveries = st.lists(
    st.lists(minute_sample, min_size=1, max_size=90), min_size=1, max_size=4
)


def stored_forms(conn: psycopg.Connection) -> tuple[set, set]:
    """(windows with stored 1m rows, windows read from raw), as (user, metric, day)s."""
    stored_windows = {
        (u, m, ts.date())
        for u, m, ts in conn.execute("SELECT user_id, metric, ts FROM data_1m_stored")
    }
    per_minute = set(conn.execute("SELECT user_id, metric, day FROM raw_minute_days").fetchall())
    return stored_windows, per_minute


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batches=minute_deliveries,
    refresh_between=st.lists(st.booleans(), min_size=4, max_size=4),
    compress_between=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_per_minute_series_are_exact_and_store_no_minute_rows(
    flavour_url: str,
    batches: list[list[tuple]],
    refresh_between: list[bool],
    compress_between: list[bool],
) -> None:
    with psycopg.connect(flavour_url, autocommit=True) as conn:
        truth = deliver(flavour_url, conn, batches, refresh_between, compress_between)
        assert_rollups_exact(conn, truth)
        off_minute = {(u, m, ts.date()) for (u, m, ts) in truth if ts.second}
        windows = {(u, m, ts.date()) for (u, m, ts) in truth}
        assert stored_forms(conn) == (off_minute, windows - off_minute)


def test_a_row_off_the_minute_after_the_first_hour_stores_the_day(flavour_url: str) -> None:
    # The first 60 rows decide which form a day is computed in; a row off the minute further
    # on is found by the hourly pass, and the day is computed again as stored buckets.
    minutes = [(1, "steps", 60 * i, float(i)) for i in range(120)]
    late = (1, "steps", 60 * 100 + 30, 0.5)
    ingest_tables(flavour_url, [raw_table(minutes, BASE)])
    first = refresh_rollups(flavour_url)
    with psycopg.connect(flavour_url) as conn:
        day = BASE.date()
        assert stored_forms(conn) == (set(), {(1, "steps", day)})
        assert first.rows["data_1m"] == 120

    ingest_tables(flavour_url, [raw_table([late], BASE)])
    refresh_rollups(flavour_url)

    truth = {(u, m, BASE + timedelta(seconds=s)): v for u, m, s, v in [*minutes, late]}
    with psycopg.connect(flavour_url) as conn:
        assert stored_forms(conn) == ({(1, "steps", day)}, set())
        assert_same(stored(conn, "data_1m"), expected_buckets(truth, "minute"))
        assert_same(stored(conn, "data_1h"), expected_buckets(truth, "hour"))
        assert_day_counts(conn, truth)
