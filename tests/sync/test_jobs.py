"""Sync jobs as plain functions: run history, maintenance, the nightly job and its scheduler."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from deltalake import write_deltalake

from engine.errors import ConfigurationError
from engine.overview import last_runs
from engine.settings import Settings
from lake import Lake, lake_relation
from sync import jobs
from sync.export import VerificationFailed
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.runs import NIGHTLY_LOCK, last_success, recent_runs, start_run
from sync.scheduler import build_scheduler
from tests.sync.lakesync import (
    FIRST_DAY,
    TODAY,
    assert_lake_equals_source,
    job_settings,
    lake_days,
    lake_stats,
    load_cohort,
    make_lake,
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return job_settings(tmp_path, tier_older_than_days=3)


def test_sync_job_records_its_run(warm_url: str, settings: Settings) -> None:
    load_cohort(warm_url)
    result = jobs.sync_job(warm_url, settings.lake, today=TODAY)
    [run] = recent_runs(warm_url)
    assert (run.job, run.status, run.error) == ("sync", "ok", None)
    assert run.days == result.days == 8 and run.rows == result.rows > 0
    assert run.bytes == result.bytes > 0 and run.files == result.files > 0
    assert run.lake_versions == result.lake_versions == {t: 3 for t in result.lake_versions}
    assert run.finished_at is not None and run.seconds is not None
    assert last_success(warm_url, "sync") == run.started_at


def test_failed_sync_is_recorded_with_its_error(
    warm_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_cohort(warm_url, users=1, days=2)
    real = Lake.day_stats

    def wrong(self: Lake, tier, pairs, version=None, damaged=None):
        stats = real(self, tier, pairs, version, damaged)
        return {p: (rows + 1, checksum) for p, (rows, checksum) in stats.items()}

    monkeypatch.setattr(Lake, "day_stats", wrong)
    with pytest.raises(VerificationFailed):
        jobs.sync_job(warm_url, settings.lake, today=TODAY)
    [run] = recent_runs(warm_url)
    assert run.status == "failed" and run.error and "read-back differs" in run.error
    assert run.rows > 0 and run.days == 0
    assert last_success(warm_url, "sync") is None


def test_a_run_whose_process_died_is_marked_interrupted(warm_url: str) -> None:
    with psycopg.connect(warm_url, autocommit=True) as dead:
        start_run(dead, "sync")  # its backend goes away with this connection
    with psycopg.connect(warm_url, autocommit=True) as alive:
        start_run(alive, "sync")
        statuses = sorted(r.status for r in recent_runs(warm_url))
    assert statuses == ["interrupted", "running"]


def test_a_killed_run_shows_interrupted_before_the_next_run_starts(warm_url: str) -> None:
    with psycopg.connect(warm_url, autocommit=True) as dead:
        start_run(dead, "tier")  # killed: its connection (and pid) goes with it
        with psycopg.connect(warm_url, autocommit=True) as alive:
            start_run(alive, "sync")
            assert {r.job: r.status for r in recent_runs(warm_url)} == {
                "tier": "running",
                "sync": "running",
            }
    assert [r.status for r in recent_runs(warm_url)] == ["interrupted", "interrupted"]
    with psycopg.connect(warm_url) as conn:  # what /catalog shows
        assert {job: run["status"] for job, run in (last_runs(conn) or {}).items()} == {
            "tier": "interrupted",
            "sync": "interrupted",
        }


def test_maintain_job_compacts_and_vacuums(
    warm_url: str, settings: Settings, tmp_path: Path
) -> None:
    load_cohort(warm_url, users=1, days=3)
    jobs.sync_job(warm_url, settings.lake, today=TODAY)
    lake = make_lake(tmp_path)
    pair = (1, FIRST_DAY)
    # A partition of two files with the same rows, as another Delta writer could leave it.
    rows = _lake_rows(lake, pair)
    lake.replace_days("raw", rows.slice(0, 0), [pair])
    for part in (rows.slice(0, 100), rows.slice(100)):
        write_deltalake(
            lake.table_dir("raw"),
            part,
            mode="append",
            storage_options=lake.storage.storage_options,
        )
    stats = lake_stats(lake, "raw", [pair])
    assert len(lake.files("raw", [1], *_day_span(pair[1])).files) == 2

    result = jobs.maintain_job(warm_url, settings.lake)

    assert len(lake.files("raw", [1], *_day_span(pair[1])).files) == 1
    recorded = lake_days(warm_url)[(1, "raw", pair[1])][:2]
    assert lake_stats(lake, "raw", [pair]) == stats == {pair: recorded}
    # The partition's files: the other days' (rewritten without the pair's) and the two.
    assert result.detail.compacted["raw"].files_removed == 3  # type: ignore[attr-defined]
    assert result.detail.files_deleted >= 2  # type: ignore[attr-defined]  # replaced files
    assert_lake_equals_source(warm_url, lake, before=TODAY - timedelta(days=1))
    assert [r.job for r in recent_runs(warm_url)] == ["maintain", "sync"]
    # The compacted file is recorded like any committed file: readers check its hash.
    (compacted,) = lake.files("raw", [1], *_day_span(pair[1])).files
    with psycopg.connect(warm_url) as conn:
        recorded_paths = {r[0] for r in conn.execute("SELECT path FROM lake_files")}
    assert lake.relative_path("raw", compacted) in recorded_paths
    # ...and only files the latest versions reference keep a record.
    current = {path for t in ("raw", "agg_1m", "agg_1h", "agg_1d") for path, _ in lake.entries(t)}
    assert recorded_paths == current
    assert jobs.verify_job(warm_url, settings.lake).status == "ok"


def _day_span(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _lake_rows(lake: Lake, pair: tuple[int, date]) -> pa.Table:
    files = lake.files("raw", [pair[0]], *_day_span(pair[1]))
    with duckdb.connect() as conn:
        rows = lake_relation(conn, files, storage=lake.storage).to_arrow_table()
    return rows.filter(pc.equal(rows["date"], pair[1]))  # a file may hold other days too


def test_nightly_job_refreshes_syncs_tiers_and_maintains(warm_url: str, settings: Settings) -> None:
    ingest_tables(warm_url, generate_cohort(2, 5, FIRST_DAY, every_s=300))  # not rolled up

    result = jobs.nightly_job(warm_url, settings.lake, today=TODAY)

    assert result.status == "ok", result.error
    assert result.days == 8  # all but the last day of each user
    runs = {r.job: r for r in recent_runs(warm_url)}
    assert set(runs) == {"nightly", "refresh", "sync", "tier", "compress", "maintain", "verify"}
    assert all(r.status == "ok" for r in runs.values())
    assert runs["tier"].days == 4  # days older than TODAY - 3: two per user
    assert last_success(warm_url, "nightly") == runs["nightly"].started_at


def test_a_nightly_job_with_the_previous_nights_lake_reads_only_new_commits(
    warm_url: str, settings: Settings
) -> None:
    # The scheduler keeps one Lake: the second night must not load any table's whole file
    # list again (what grows with the lake), only the commits made since.
    lake = Lake(settings.lake.path)
    ingest_tables(warm_url, generate_cohort(2, 5, FIRST_DAY, every_s=300))
    first = jobs.nightly_job(warm_url, settings.lake, today=TODAY, lake=lake)
    assert first.status == "ok", first.error
    loads, opens = lake.snapshot_loads, lake.table_opens
    assert loads > 0 and opens > 0
    ingest_tables(warm_url, generate_cohort(2, 1, TODAY - timedelta(days=1), every_s=300))

    second = jobs.nightly_job(warm_url, settings.lake, today=TODAY + timedelta(days=1), lake=lake)

    assert second.status == "ok", second.error
    assert second.days == 2  # the new day of each user, written through the same Lake
    assert (lake.snapshot_loads, lake.table_opens) == (loads, opens)
    assert_lake_equals_source(warm_url, Lake(settings.lake.path), before=TODAY)


def test_the_nightly_job_prunes_the_calendar_cache_to_its_setting(
    warm_url: str, settings: Settings
) -> None:
    with psycopg.connect(warm_url) as conn:
        conn.execute(
            "INSERT INTO calendar_cache (user_id, metric, start_ts, end_ts, count, sum, "
            "day_seqs, filled_at) SELECT 1, 'steps', t, t + interval '1 day', 0, 0, '{}', t "
            "FROM generate_series(timestamptz '2024-01-01', '2024-01-05', interval '1 day') t"
        )
    result = jobs.nightly_job(warm_url, settings.lake, today=TODAY, calendar_cache_rows=2)
    assert result.status == "ok", result.error
    runs = {r.job: r for r in recent_runs(warm_url)}
    assert runs["prune_cache"].rows == 3
    with psycopg.connect(warm_url) as conn:
        kept = conn.execute("SELECT start_ts::date FROM calendar_cache ORDER BY 1").fetchall()
    assert kept == [(date(2024, 1, 4),), (date(2024, 1, 5),)]  # the newest fills


def test_second_nightly_job_is_skipped_while_one_runs(warm_url: str, settings: Settings) -> None:
    with psycopg.connect(warm_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (NIGHTLY_LOCK,))
        result = jobs.nightly_job(warm_url, settings.lake, today=TODAY)
    assert result.status == "skipped"
    assert [(r.job, r.status) for r in recent_runs(warm_url)] == [("nightly", "skipped")]


NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        (None, True),
        (NOW - timedelta(hours=10), False),
        (NOW - timedelta(days=1), False),
        (NOW - timedelta(days=1, minutes=1), True),
        (NOW - timedelta(days=30), True),
    ],
)
def test_catch_up_when_the_last_success_is_over_a_day_old(
    last: datetime | None, expected: bool
) -> None:
    assert jobs.needs_catch_up(last, NOW) is expected


def _started(warm_url: str, settings: Settings, now: datetime) -> BackgroundScheduler:
    scheduler = build_scheduler(warm_url, settings, now=now, scheduler_class=BackgroundScheduler)
    assert isinstance(scheduler, BackgroundScheduler)
    scheduler.start(paused=True)  # computes next run times; runs nothing
    return scheduler


def test_scheduler_wiring(warm_url: str, settings: Settings) -> None:
    settings = replace(
        settings,
        scheduler=replace(settings.scheduler, misfire_grace_s=600),
        database=replace(settings.database, refresh_workers=3),
    )
    scheduler = _started(warm_url, settings, now=NOW)
    try:
        nightly, refresh = scheduler.get_job("nightly"), scheduler.get_job("refresh")
        assert {j.id for j in scheduler.get_jobs()} == {"nightly", "refresh"}
        assert str(nightly.trigger) == (
            "cron[month='*', day='*', day_of_week='*', hour='2', minute='0']"
        )
        assert str(refresh.trigger) == (
            "cron[month='*', day='*', day_of_week='*', hour='*', minute='0']"
        )
        assert str(nightly.trigger.timezone) == "UTC"
        for job in (nightly, refresh):
            assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 600)
        assert nightly.func is jobs.nightly_job and nightly.args == (warm_url, settings.lake)
        assert isinstance(nightly.kwargs["lake"], Lake)  # one for every night
        assert nightly.kwargs["calendar_cache_rows"] == settings.query.calendar_cache_rows
        assert nightly.kwargs["refresh_workers"] == 3
        assert refresh.func is jobs.refresh_job and refresh.args == (warm_url, 3)
        assert nightly.next_run_time == NOW  # no successful run yet: catch up at once
    finally:
        scheduler.shutdown(wait=False)


def test_scheduler_waits_for_the_cron_after_a_recent_success(
    warm_url: str, settings: Settings
) -> None:
    with psycopg.connect(warm_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sync_runs (job, status, started_at, finished_at) "
            "VALUES ('nightly', 'ok', now() - interval '3 hours', now() - interval '2 hours')"
        )
    now = datetime.now(UTC)
    scheduler = _started(warm_url, settings, now=now)
    try:
        due = scheduler.get_job("nightly").next_run_time
        assert due > now and (due.hour, due.minute) == (2, 0)
    finally:
        scheduler.shutdown(wait=False)


def test_bad_crontab_names_the_setting(warm_url: str, settings: Settings) -> None:
    settings = replace(settings, scheduler=replace(settings.scheduler, nightly_cron="0 25 * *"))
    with pytest.raises(ConfigurationError) as error:
        build_scheduler(warm_url, settings, scheduler_class=BackgroundScheduler)
    assert error.value.parameter == "STRATUM_NIGHTLY_CRON"
