"""Tiering drops only verified, unchanged days from the warm store; a late write into a
tiered day copies it back from the lake first (rehydration)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import SyncFailed
from lake import Lake
from sync import jobs
from sync.export import VerificationFailed
from sync.rollups import refresh_rollups
from sync.runs import SYNC_LOCK
from sync.tiering import TieringResult, droppable, span_days, tier_warm_store
from tests.lake.builders import tier_rows
from tests.sync.lakesync import (
    FIRST_DAY,
    TODAY,
    assert_lake_equals_source,
    day_state,
    ingest_rows,
    job_settings,
    lake_days,
    lake_stats,
    load_cohort,
    make_lake,
    run_sync,
    source_stats,
)

LAST = TODAY - timedelta(days=1)  # not synced (grace period)
CHANGED = FIRST_DAY + timedelta(days=1)  # user 1: a late row after the sync


def warm_rows(url: str, table: str, user_id: int, day: date) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {table} WHERE user_id = %s "
            "AND ts >= %s::date::timestamp AT TIME ZONE 'UTC' "
            "AND ts < (%s::date + 1)::timestamp AT TIME ZONE 'UTC'",
            (user_id, day, day),
        ).fetchone()
    assert row is not None
    return int(row[0])


def tier(url: str, lake: Lake, older_than: int = 1) -> TieringResult:
    return tier_warm_store(url, lake, older_than_days=older_than, today=TODAY, batch_days=3)


def test_only_verified_unchanged_days_leave_the_warm_store(flavour_url: str, lake: Lake) -> None:
    ingest_rows(flavour_url, [(f"{CHANGED}T10:00:00Z", 1, "heart_rate", 80.0)])
    before = {t: source_stats(flavour_url, t) for t in ("raw", "agg_1h", "agg_1d")}

    result = tier(flavour_url, lake)

    synced = [(u, FIRST_DAY + timedelta(days=i)) for u in (1, 2) for i in range(4)]
    expected = sorted(p for p in synced if p != (1, CHANGED))
    assert result.days == len(expected) == 7 and not result.refused
    states = day_state(flavour_url)
    assert sorted(p for p, s in states.items() if s[3] is not None) == expected
    for user_id, day in states:
        kept = (user_id, day) not in expected
        for table in ("raw_data", "data_1m"):
            assert (warm_rows(flavour_url, table, user_id, day) > 0) == kept, (user_id, day)
    assert result.rows["raw_data"] == sum(before["raw"][p][0] for p in expected)
    # Coarse rollups stay; the lake still holds exactly what was verified.
    assert source_stats(flavour_url, "agg_1h") == before["agg_1h"]
    recorded = lake_days(flavour_url)
    for tier_name in ("raw", "agg_1m"):
        stats = lake_stats(lake, tier_name, expected)
        assert all(stats[p] == recorded[(p[0], tier_name, p[1])][:2] for p in expected)
    assert tier(flavour_url, lake).days == 0  # idempotent


def test_progress_counts_every_user_day_against_a_total_known_up_front(
    flavour_url: str, lake: Lake
) -> None:
    # On TimescaleDB most days leave with whole chunks before any row-by-row batch: the bar
    # must count those too (it sat at "0/0 0 rows" for the minutes the chunk drops took).
    ingest_rows(flavour_url, [(f"{CHANGED}T10:00:00Z", 1, "heart_rate", 80.0)])  # stays warm
    calls: list[tuple[int, int, int]] = []

    result = tier_warm_store(
        flavour_url,
        lake,
        older_than_days=1,
        today=TODAY,
        batch_days=3,
        progress=lambda done, total, rows: calls.append((done, total, rows)),
    )

    assert result.days == 7
    assert calls[0] == (0, 7, 0)
    assert calls[-1] == (7, 7, result.total_rows) and result.total_rows > 0
    assert all(total == 7 for _, total, _ in calls)
    assert [done for done, _, _ in calls] == sorted(done for done, _, _ in calls)
    assert [rows for _, _, rows in calls] == sorted(rows for _, _, rows in calls)


def test_a_day_not_synced_in_every_tier_is_not_tiered(
    flavour_url: str, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest_rows(flavour_url, [(f"{CHANGED}T10:00:00Z", 1, "heart_rate", 80.0)])
    refresh_rollups(flavour_url)
    real_day_stats = Lake.day_stats

    def hourly_mismatch(self: Lake, tier, pairs, version=None, damaged=None):  # type: ignore[no-untyped-def]
        stats = real_day_stats(self, tier, pairs, version, damaged)
        if tier == "agg_1h" and (1, CHANGED) in stats:
            stats[(1, CHANGED)] = (0, 0)
        return stats

    monkeypatch.setattr(Lake, "day_stats", hourly_mismatch)
    with pytest.raises(VerificationFailed):
        run_sync(flavour_url, lake)
    monkeypatch.setattr(Lake, "day_stats", real_day_stats)
    recorded, state = lake_days(flavour_url), day_state(flavour_url)[(1, CHANGED)]
    assert recorded[(1, "raw", CHANGED)][2] == recorded[(1, "agg_1m", CHANGED)][2] == state[0]
    assert state[2] < state[0]  # not synced: the router reads every tier of it warm

    result = tier(flavour_url, lake)

    assert result.days == 7 and day_state(flavour_url)[(1, CHANGED)][3] is None
    assert warm_rows(flavour_url, "raw_data", 1, CHANGED) > 0


def test_horizon_is_respected(flavour_url: str, lake: Lake) -> None:
    result = tier(flavour_url, lake, older_than=3)  # days before TODAY - 3
    assert result.days == 2 * 2
    tiered = {p for p, s in day_state(flavour_url).items() if s[3] is not None}
    assert max(d for _, d in tiered) == TODAY - timedelta(days=4)


def test_a_lake_copy_that_no_longer_matches_is_not_tiered(flavour_url: str, lake: Lake) -> None:
    victim = (2, FIRST_DAY + timedelta(days=2))
    lake.replace_days("raw", tier_rows("raw", [victim], metrics=("heart_rate",)), [victim])

    result = tier(flavour_url, lake)

    assert [(u, d) for u, d, _ in result.refused] == [victim]
    assert result.days == 7
    assert warm_rows(flavour_url, "raw_data", *victim) > 0
    recorded = lake_days(flavour_url)
    assert (victim[0], "raw", victim[1]) not in recorded  # the router reads it warm again
    assert day_state(flavour_url)[victim][2] == 0  # queued for a fresh sync
    assert run_sync(flavour_url, lake).days == 1
    assert tier(flavour_url, lake).days == 1
    assert_lake_equals_source_for(flavour_url, lake, victim)


_HEART_RATE_OF_DAY = (
    "user_id = %(user)s AND metric = 'heart_rate' "
    "AND ts >= %(day)s::date::timestamp AT TIME ZONE 'UTC' "
    "AND ts < (%(day)s::date + 1)::timestamp AT TIME ZONE 'UTC'"
)
# by key: a ctid names a row only within one TimescaleDB chunk
_FIRST_ROW = (
    f"{_HEART_RATE_OF_DAY} AND ts = (SELECT min(ts) FROM {{table}} WHERE {_HEART_RATE_OF_DAY})"
)
_LOSSES = {
    "raw_data": [f"DELETE FROM raw_data WHERE {_FIRST_ROW.format(table='raw_data')}"],
    # The fixture's series is per minute, so its 1m buckets are its raw rows: store them as
    # 1m rows (the same buckets), then lose one.
    "data_1m_stored": [
        f"INSERT INTO data_1m_stored SELECT * FROM data_1m WHERE {_HEART_RATE_OF_DAY}",
        "DELETE FROM raw_minute_days WHERE user_id = %(user)s AND day = %(day)s "
        "AND metric = 'heart_rate'",
        f"DELETE FROM data_1m_stored WHERE {_FIRST_ROW.format(table='data_1m_stored')}",
    ],
    # Its record lost: the day's 1m buckets of heart rate are gone from data_1m.
    "raw_minute_days": [
        "DELETE FROM raw_minute_days WHERE user_id = %(user)s AND day = %(day)s "
        "AND metric = 'heart_rate'"
    ],
}


@pytest.mark.parametrize("loss", sorted(_LOSSES))
def test_a_day_whose_warm_rows_no_longer_match_the_export_is_not_tiered(
    flavour_url: str, lake: Lake, loss: str
) -> None:
    # Rows gone from the warm store behind the sync's back (no change recorded): the lake
    # copy is whole, but the warm store no longer holds what was verified.
    victim = (1, FIRST_DAY + timedelta(days=1))
    with psycopg.connect(flavour_url) as conn:
        for statement in _LOSSES[loss]:
            changed = conn.execute(statement, {"user": victim[0], "day": victim[1]}).rowcount
            assert changed > 0, statement

    result = tier(flavour_url, lake)

    assert [(u, d, why) for u, d, why in result.refused] == [
        (*victim, "warm-store row count differs from the verified export")
    ]
    assert result.days == 7
    assert day_state(flavour_url)[victim][2] == 0  # queued for a fresh sync


def assert_lake_equals_source_for(url: str, lake: Lake, pair: tuple[int, date]) -> None:
    recorded = lake_days(url)
    for name in ("raw", "agg_1m"):
        assert lake_stats(lake, name, [pair])[pair] == recorded[(pair[0], name, pair[1])][:2]


def test_sync_never_overwrites_a_tiered_day(flavour_url: str, lake: Lake) -> None:
    tier(flavour_url, lake)
    day = (1, FIRST_DAY)
    kept = lake_stats(lake, "raw", [day])
    with psycopg.connect(flavour_url) as conn:  # even if its sync record were lost
        conn.execute(
            "UPDATE day_state SET synced_seq = 0 WHERE user_id = 1 AND day = %s", (FIRST_DAY,)
        )
    result = run_sync(flavour_url, lake)
    assert result.days == 0
    assert lake_stats(lake, "raw", [day]) == kept and kept[day][0] > 0


def test_late_row_into_a_tiered_day_rehydrates_it(flavour_url: str, lake: Lake) -> None:
    day = (1, FIRST_DAY + timedelta(days=1))
    full_raw = source_stats(flavour_url, "raw")[day]
    tier(flavour_url, lake)
    assert warm_rows(flavour_url, "raw_data", *day) == 0
    late = datetime(day[1].year, day[1].month, day[1].day, 23, 59, 59, 500_000, tzinfo=UTC)

    # No lake path given: ingest finds the lake where tiering recorded it.
    ingest_rows(flavour_url, [(late.isoformat(), 1, "heart_rate", 123.0)])

    assert warm_rows(flavour_url, "raw_data", *day) == full_raw[0] + 1
    assert day_state(flavour_url)[day][3] is None  # no longer tiered
    recorded = lake_days(flavour_url)[(1, "raw", day[1])]
    assert recorded[2] < day_state(flavour_url)[day][0]  # the router reads it warm now
    refresh_rollups(flavour_url)  # 1m rebuilt from the whole day again, not from the late row
    with psycopg.connect(flavour_url) as conn:
        counted = conn.execute(
            "SELECT sum(count) FROM data_1m WHERE user_id = 1 AND ts >= %s AND ts < %s",
            (late.replace(hour=0, minute=0, second=0, microsecond=0), late),
        ).fetchone()
    assert counted == (full_raw[0] + 1,)

    assert run_sync(flavour_url, lake).days == 1
    assert lake_stats(lake, "raw", [day])[day] == source_stats(flavour_url, "raw")[day]
    assert lake_stats(lake, "raw", [day])[day][0] == full_raw[0] + 1
    assert_lake_equals_source(flavour_url, lake, before=LAST)


def test_redelivered_row_into_a_tiered_day_wins_over_the_lake(flavour_url: str, lake: Lake) -> None:
    day = (2, FIRST_DAY)
    with psycopg.connect(flavour_url) as conn:
        ts, value = conn.execute(
            "SELECT ts, value FROM raw_data WHERE user_id = 2 AND metric = 'heart_rate' "
            "AND ts >= %s ORDER BY ts LIMIT 1",
            (datetime(FIRST_DAY.year, FIRST_DAY.month, FIRST_DAY.day, 12, tzinfo=UTC),),
        ).fetchone()  # type: ignore[misc]
    count = source_stats(flavour_url, "raw")[day][0]
    tier(flavour_url, lake)
    ingest_rows(flavour_url, [(ts.isoformat(), 2, "heart_rate", value + 1.0)])
    with psycopg.connect(flavour_url) as conn:
        stored = conn.execute(
            "SELECT value FROM raw_data WHERE user_id = 2 AND metric = 'heart_rate' AND ts = %s",
            (ts,),
        ).fetchone()
    assert stored == (value + 1.0,)
    assert warm_rows(flavour_url, "raw_data", *day) == count


def test_tiering_waits_for_no_sync(flavour_url: str, lake: Lake) -> None:
    with psycopg.connect(flavour_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (SYNC_LOCK,))
        with pytest.raises(SyncFailed, match="another"):
            tier(flavour_url, lake)
    assert all(s[3] is None for s in day_state(flavour_url).values())


@pytest.mark.parametrize(
    ("start", "end", "first", "last"),
    [
        ("2024-01-01T00:00:00+00:00", "2024-01-02T00:00:00+00:00", "2024-01-01", "2024-01-01"),
        ("2024-01-04T00:00:00+00:00", "2024-01-11T00:00:00+00:00", "2024-01-04", "2024-01-10"),
        ("2024-01-01T12:00:00+00:00", "2024-01-02T12:00:00+00:00", "2024-01-01", "2024-01-02"),
        ("2024-01-01T01:00:00+01:00", "2024-01-02T01:00:00+01:00", "2024-01-01", "2024-01-01"),
    ],
)
def test_chunk_span_days(start: str, end: str, first: str, last: str) -> None:
    days = span_days(datetime.fromisoformat(start), datetime.fromisoformat(end))
    assert [d.isoformat() for d in days] == [first, last]


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([(False, True), (False, True)], True),
        ([(True, False), (False, True)], True),  # already tiered days do not block
        ([(False, True), (False, False)], False),  # one user's day changed since its sync
        ([(True, False)], False),  # nothing left to drop
        ([], False),
    ],
)
def test_a_chunk_goes_only_when_every_day_in_it_may(
    states: list[tuple[bool, bool]], expected: bool
) -> None:
    assert droppable(states) is expected


# -- a day's file that still hashes to its record vouches for the day -----------------------


def _forget_records(url: str, lake: Lake, tier_name: str, user_id: int) -> None:
    paths = [path for path, f in lake.entries(tier_name) if f.user_id == user_id]
    with psycopg.connect(url) as conn:
        conn.execute(
            "DELETE FROM lake_files WHERE tier = %s AND path = ANY(%s)", (tier_name, paths)
        )


def _rewrite_in_place(lake: Lake, tier_name: str, pair: tuple[int, date]) -> None:
    """The day's file, rewritten where it lies as a valid Parquet file with one measure of
    that day changed: no checksum inside the file can tell."""
    (path, lake_file) = lake.day_files(tier_name, [pair])[pair]
    stored = pq.read_table(lake_file.path)
    column = "value" if tier_name == "raw" else "sum"
    values = stored.column(column).to_pylist()
    on_day = stored.column("ts").cast(pa.date32()).to_pylist().index(pair[1])
    values[on_day] += 1.0
    stored = stored.set_column(
        stored.schema.get_field_index(column),
        column,
        pa.array(values, stored.schema.field(column).type),
    )
    pq.write_table(stored, lake_file.path, write_page_checksum=True)


def test_days_in_files_that_still_hash_to_their_records_are_not_read_back(
    flavour_url: str, lake: Lake
) -> None:
    _forget_records(flavour_url, lake, "raw", 2)  # as if written before records were kept

    result = tier(flavour_url, lake)

    assert result.days == 8 and not result.refused
    assert result.read_back == 4  # user 2's raw days; every other file vouched by its hash
    recorded = lake_days(flavour_url)
    for tier_name in ("raw", "agg_1m"):
        stats = lake_stats(lake, tier_name, [(u, d) for u, _, d in recorded])
        assert all(stats[(u, d)] == v[:2] for (u, t, d), v in recorded.items() if t == tier_name)


@pytest.mark.parametrize("tier_name", ["raw", "agg_1m"])
def test_a_file_changed_after_its_record_is_read_back_and_its_day_refused(
    flavour_url: str, lake: Lake, tier_name: str
) -> None:
    victim = (2, FIRST_DAY + timedelta(days=1))
    _rewrite_in_place(lake, tier_name, victim)

    result = tier(flavour_url, lake)

    assert [(u, d, why) for u, d, why in result.refused] == [
        (*victim, "lake copy differs from its verification record")
    ]
    assert result.days == 7 and result.read_back > 0
    assert warm_rows(flavour_url, "raw_data", *victim) > 0


def test_a_wrong_day_that_compaction_copies_is_not_vouched_for(
    flavour_url: str, tmp_path: Path
) -> None:
    # January in two files (two syncs), one of them wrong in a way no checksum inside the
    # file sees: compaction copies the wrong day faithfully. Its new file must not vouch for
    # that day, or tiering would drop the only right copy from the warm store.
    load_cohort(flavour_url)
    lake = make_lake(tmp_path)
    run_sync(flavour_url, lake, today=FIRST_DAY + timedelta(days=2))
    run_sync(flavour_url, lake)
    victim = (1, FIRST_DAY)
    _rewrite_in_place(lake, "raw", victim)
    january = [(1, FIRST_DAY + timedelta(days=n)) for n in range(3)]
    assert len({path for path, _ in lake.day_files("raw", january).values()}) == 2

    settings = job_settings(tmp_path, tier_older_than_days=1)
    done = jobs.maintain_job(flavour_url, settings.lake, lake, today=TODAY + timedelta(days=7))

    assert done.status == "failed" and "compacted as they were, but not as verified" in str(
        done.error
    )
    assert len({path for path, _ in lake.day_files("raw", january).values()}) == 1
    with psycopg.connect(flavour_url) as conn:
        damage = conn.execute("SELECT user_id, tier, day FROM lake_damage").fetchall()
        recorded = {path for (path,) in conn.execute("SELECT path FROM lake_files")}
    assert damage == [(1, "raw", FIRST_DAY)]
    assert lake.day_files("raw", [victim])[victim][0] not in recorded
    result = tier(flavour_url, lake)
    assert [(u, d) for u, d, _ in result.refused] == [victim]
    assert warm_rows(flavour_url, "raw_data", *victim) > 0
    assert result.days == 7


def test_a_file_a_lost_commit_brings_back_does_not_vouch_for_a_day_verified_after_it(
    flavour_url: str, lake: Lake
) -> None:
    victim = (1, FIRST_DAY + timedelta(days=1))
    ingest_rows(flavour_url, [(f"{victim[1]}T10:00:30Z", 1, "heart_rate", 99.0)])  # late
    refresh_rollups(flavour_url)
    before = lake.day_files("raw", [victim])[victim][0]
    assert run_sync(flavour_url, lake).days == 1  # the day again, in a new file
    # The raw log loses that commit: the file before it, whose record is still kept (no
    # maintenance ran), holds the day again, without the late row its record now counts.
    log = Path(lake.table_dir("raw")) / "_delta_log"
    max(log.glob("*.json")).unlink()
    reopened = Lake(lake.root)
    assert reopened.day_files("raw", [victim])[victim][0] == before

    result = tier(flavour_url, reopened)

    assert [(u, d, why) for u, d, why in result.refused] == [
        (*victim, "lake copy differs from its verification record")
    ]
    assert warm_rows(flavour_url, "raw_data", *victim) > 0
