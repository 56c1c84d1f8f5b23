"""A refresh runs on several connections at once, each on a disjoint share of the windows.

Each share refreshes only its own (user, day) windows, the shares together refresh every
one, and with chunks longer than a day one participant's days never go to two shares (their
compressed batches span days).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from sync.ingest import ingest_tables
from sync.rollups import RefreshShares, refresh_rollups, refresh_share
from sync.schema import init_schema
from tests.property.rows import raw_table
from tests.property.test_rollups_exact import assert_rollups_exact
from tests.sync.test_timescale import empty_database, needs_timescaledb

__all__ = ["empty_database"]  # a fixture, used by name below

BASE = datetime(2024, 3, 10, tzinfo=UTC)
USERS = (1, 2, 3)
DAYS = 4


def load(url: str) -> dict[tuple[int, str, datetime], float]:
    """Every USERS x DAYS user-day, two metrics, on and off the minute; the raw truth."""
    rows = [
        (user, metric, day * 86_400 + seconds, float(user * 1000 + day * 10 + seconds % 7))
        for user in USERS
        for day in range(DAYS)
        for metric in ("heart_rate", "steps")
        for seconds in (0, 60, 3_600, 3_601 if metric == "heart_rate" else 7_200)
    ]
    ingest_tables(url, [raw_table(rows, BASE)])
    return {(u, m, BASE + timedelta(seconds=s)): v for u, m, s, v in rows}


def pending(url: str) -> set[tuple[int, date]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT user_id, day FROM day_state WHERE change_seq > refreshed_seq")
        return set(rows.fetchall())


def test_each_share_refreshes_its_own_windows_and_together_all(flavour_url: str) -> None:
    truth = load(flavour_url)
    everything = pending(flavour_url)
    with psycopg.connect(flavour_url) as conn:
        shares = RefreshShares.of(conn, 2)
    assert shares.by_day  # one-day chunks (or none): a participant's days are split too

    first_days, _ = refresh_share(flavour_url, 5, shares.params(0))  # several batches

    left = pending(flavour_url)
    epoch = date(2000, 1, 1)
    assert left == {(u, d) for u, d in everything if (u + (d - epoch).days) % 2 == 1}
    assert {d for _, d in left} == {d for _, d in everything}  # every day split, not skipped
    assert first_days == len(everything) - len(left)

    second_days, _ = refresh_share(flavour_url, 5, shares.params(1))
    assert first_days + second_days == len(everything) == len(USERS) * DAYS
    with psycopg.connect(flavour_url, autocommit=True) as conn:
        conn.execute("SET timezone = 'UTC'")
        assert_rollups_exact(conn, truth)


def test_a_refresh_on_several_connections_is_exact(flavour_url: str) -> None:
    truth = load(flavour_url)
    result = refresh_rollups(flavour_url, batch_days=3, workers=3)
    assert result.days == len(USERS) * DAYS
    with psycopg.connect(flavour_url, autocommit=True) as conn:
        conn.execute("SET timezone = 'UTC'")
        assert_rollups_exact(conn, truth)


@needs_timescaledb
@pytest.mark.parametrize("empty_database", ["timescaledb"], indirect=True)
def test_chunks_longer_than_a_day_keep_a_participants_days_in_one_share(
    empty_database: str,
) -> None:
    init_schema(empty_database, chunk_interval="7 days")
    load(empty_database)
    with psycopg.connect(empty_database) as conn:
        shares = RefreshShares.of(conn, 2)
    assert not shares.by_day

    refresh_share(empty_database, 256, shares.params(0))

    left = pending(empty_database)
    assert {u for u, _ in left} == {1, 3}  # user 2's days all in share 0, the others' in 1
    assert len(left) == 2 * DAYS


def test_the_largest_participant_number_is_refreshed_too(flavour_url: str) -> None:
    # Its share's key (user_id + days since 2000) overflowed integer arithmetic.
    largest = 2**31 - 1
    ingest_tables(flavour_url, [raw_table([(largest, "steps", 60, 12.0)], BASE)])
    assert refresh_rollups(flavour_url).days == 1
    assert pending(flavour_url) == set()
