"""`stratum sync` against a real PostgreSQL and a real lake: what reaches the lake, when, and
what happens on late data, read-back mismatches and concurrent runs."""

from __future__ import annotations

import threading
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest

from engine.errors import SyncFailed
from lake import TIERS, Lake
from sync.coverage import lake_summary
from sync.export import VerificationFailed
from sync.rollups import refresh_rollups
from sync.runs import SYNC_LOCK
from tests.sync.lakesync import (
    FIRST_DAY,
    TODAY,
    assert_lake_equals_source,
    day_state,
    ingest_rows,
    lake_days,
    lake_stats,
    load_cohort,
    make_lake,
    run_sync,
    source_stats,
)

CUTOFF = TODAY - timedelta(days=1)  # grace 1 day: the cohort's last day stays warm
LAST = TODAY - timedelta(days=1)


@pytest.fixture
def synced(warm_url: str, tmp_path: Path) -> Lake:
    load_cohort(warm_url)
    lake = make_lake(tmp_path)
    run_sync(warm_url, lake)
    return lake


def test_lake_equals_source_per_user_day_tier(warm_url: str, synced: Lake) -> None:
    assert_lake_equals_source(warm_url, synced, before=CUTOFF)
    recorded = lake_days(warm_url)
    states = day_state(warm_url)
    exported = {(u, d) for (u, _, d) in recorded}
    assert exported == {p for p in states if p[1] < CUTOFF}
    for tier in TIERS:
        source = source_stats(warm_url, tier)
        for (u, d), (change, _, synced_seq, _) in states.items():
            if d < CUTOFF:
                rows, checksum, seq = recorded[(u, tier, d)]
                assert (rows, checksum) == source[(u, d)]
                assert seq == change == synced_seq


def test_grace_period_keeps_recent_days_out(warm_url: str, synced: Lake) -> None:
    recorded = {d for (_, _, d) in lake_days(warm_url)}
    assert LAST not in recorded and max(recorded) == LAST - timedelta(days=1)
    assert lake_stats(synced, "raw", [(1, LAST)]) == {(1, LAST): (0, 0)}
    # One day later the last day is complete and goes; nothing else is re-exported.
    again = run_sync(warm_url, synced, today=TODAY + timedelta(days=1))
    assert again.days == 2  # both users' last day
    assert_lake_equals_source(warm_url, synced, before=TODAY)


def test_second_run_exports_nothing(warm_url: str, synced: Lake) -> None:
    versions = {tier: synced.version(tier) for tier in TIERS}
    again = run_sync(warm_url, synced)
    assert again.days == 0 and again.total_rows == 0
    assert {tier: synced.version(tier) for tier in TIERS} == versions


def test_late_rows_mark_the_day_stale_until_resynced(warm_url: str, synced: Lake) -> None:
    late_day = FIRST_DAY + timedelta(days=1)
    before = lake_days(warm_url)
    ingest_rows(warm_url, [(f"{late_day}T12:00:00.5Z", 1, "heart_rate", 199.0)])
    change = day_state(warm_url)[(1, late_day)][0]
    for tier in TIERS:  # the router reads this day from the warm store until the re-sync
        assert before[(1, tier, late_day)][2] < change
    refresh_rollups(warm_url)

    result = run_sync(warm_url, synced)

    assert result.days == 1
    assert result.rows["raw"] == before[(1, "raw", late_day)][0] + 1
    after = lake_days(warm_url)
    for tier in TIERS:
        assert after[(1, tier, late_day)][2] == change
    assert after[(1, "raw", late_day)][0] == before[(1, "raw", late_day)][0] + 1
    assert_lake_equals_source(warm_url, synced, before=CUTOFF)


def test_days_with_stale_rollups_wait(warm_url: str, synced: Lake) -> None:
    late_day = FIRST_DAY
    ingest_rows(warm_url, [(f"{late_day}T03:00:00Z", 2, "steps", 5.0)])
    result = run_sync(warm_url, synced)
    assert result.days == 0 and result.skipped_stale == 1
    assert day_state(warm_url)[(2, late_day)][2] < day_state(warm_url)[(2, late_day)][0]


def test_read_back_mismatch_keeps_the_day_out_and_fails(
    warm_url: str, synced: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad_day = FIRST_DAY + timedelta(days=2)
    ingest_rows(
        warm_url,
        [
            (f"{bad_day}T01:00:00Z", 1, "heart_rate", 55.0),
            (f"{FIRST_DAY}T01:00:00Z", 2, "heart_rate", 56.0),
        ],
    )
    refresh_rollups(warm_url)
    real_day_stats = Lake.day_stats

    def corrupt(self: Lake, tier: str, pairs, version=None, damaged=None):
        stats = real_day_stats(self, tier, pairs, version, damaged)
        if tier == "agg_1m" and (1, bad_day) in stats:
            rows, checksum = stats[(1, bad_day)]
            stats[(1, bad_day)] = (rows, checksum ^ 1)
        return stats

    monkeypatch.setattr(Lake, "day_stats", corrupt)
    with pytest.raises(VerificationFailed) as failure:
        run_sync(warm_url, synced)

    assert failure.value.result.failed == [(1, bad_day, "agg_1m")]
    assert failure.value.result.days == 1  # the other changed day went through
    recorded = lake_days(warm_url)
    assert (1, "agg_1m", bad_day) not in recorded  # its old record went with its partition
    change, _, synced_seq, _ = day_state(warm_url)[(1, bad_day)]
    assert synced_seq < change  # still pending
    assert recorded[(1, "raw", bad_day)][2] == change  # the tiers that matched are recorded
    assert recorded[(2, "raw", FIRST_DAY)][2] == day_state(warm_url)[(2, FIRST_DAY)][0]

    monkeypatch.setattr(Lake, "day_stats", real_day_stats)
    assert run_sync(warm_url, synced).days == 1
    assert lake_days(warm_url)[(1, "agg_1m", bad_day)][2] == change


def test_write_during_export_leaves_the_day_pending(
    warm_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_cohort(warm_url)
    lake = make_lake(tmp_path)
    real_replace = Lake.replace_days
    written: list[bool] = []

    def replace_then_late_write(self: Lake, tier, data, days):
        if not written:  # after the snapshot was read, before its commit is recorded
            ingest_rows(warm_url, [(f"{FIRST_DAY}T05:00:00Z", 1, "spo2", 91.0)])
            written.append(True)
        return real_replace(self, tier, data, days)

    monkeypatch.setattr(Lake, "replace_days", replace_then_late_write)
    run_sync(warm_url, lake)
    monkeypatch.setattr(Lake, "replace_days", real_replace)

    change, _, synced_seq, _ = day_state(warm_url)[(1, FIRST_DAY)]
    recorded = lake_days(warm_url)[(1, "raw", FIRST_DAY)]
    assert recorded[2] == synced_seq < change  # exported as it was; the late row is pending
    assert lake_stats(lake, "raw", [(1, FIRST_DAY)])[(1, FIRST_DAY)][0] == recorded[0]
    refresh_rollups(warm_url)
    assert run_sync(warm_url, lake).days == 1
    assert_lake_equals_source(warm_url, lake, before=CUTOFF)


def test_a_second_sync_refuses_while_one_runs(warm_url: str, tmp_path: Path) -> None:
    load_cohort(warm_url, users=1, days=3)
    lake = make_lake(tmp_path)
    with psycopg.connect(warm_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (SYNC_LOCK,))
        with pytest.raises(SyncFailed, match="another sync or tiering run is running"):
            run_sync(warm_url, lake)
    assert lake_days(warm_url) == {} and lake.version("raw") is None


def test_concurrent_syncs_do_not_both_export(
    warm_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_cohort(warm_url, users=1, days=3)
    lake = make_lake(tmp_path)
    inside, release = threading.Event(), threading.Event()
    real_replace = Lake.replace_days

    def slow_replace(self: Lake, tier, data, days):
        inside.set()
        release.wait(10)
        return real_replace(self, tier, data, days)

    monkeypatch.setattr(Lake, "replace_days", slow_replace)
    outcome: dict[str, object] = {}
    first = threading.Thread(target=lambda: outcome.setdefault("first", run_sync(warm_url, lake)))
    first.start()
    assert inside.wait(10)
    with pytest.raises(SyncFailed, match="another sync"):
        run_sync(warm_url, make_lake(tmp_path))
    release.set()
    first.join(10)
    assert outcome["first"].days == 3  # type: ignore[attr-defined]
    assert lake.version("raw") == 1  # created, then one commit: only the first exported


def test_days_with_no_rows_for_a_metric_are_exported_empty(warm_url: str, tmp_path: Path) -> None:
    ingest_rows(warm_url, [("2024-03-01T10:00:00Z", 7, "steps", 3.0)])
    refresh_rollups(warm_url)
    lake = make_lake(tmp_path)
    result = run_sync(warm_url, lake, today=date(2024, 3, 5))
    assert result.days == 1 and result.rows == {"raw": 1, "agg_1m": 1, "agg_1h": 1, "agg_1d": 1}
    assert_lake_equals_source(warm_url, lake, before=date(2024, 3, 4))


def test_the_summary_counts_each_partition_once(warm_url: str, tmp_path: Path) -> None:
    # Batches of 3 user-days split each user's month across batches; agg_1h/agg_1d partitions
    # (user-month, user-year) are rewritten whole by each. The demo's summary said 23,824
    # hourly rows where its lake table showed 17,538: the rewrites were counted each time.
    load_cohort(warm_url)
    lake = make_lake(tmp_path)
    result = run_sync(warm_url, lake, batch=3)
    summary = {table.table: table for table in lake_summary(lake)}
    assert result.rows == {name: summary[name].rows for name in TIERS}
    assert result.files == sum(table.files for table in summary.values())
    assert result.bytes == sum(table.bytes for table in summary.values())
