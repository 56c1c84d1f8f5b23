"""The rolling scrub (issue 12): the nightly verify hashes the files new since its last run
and a bounded share of the others, so its cost does not grow with the whole history, and
still finds a damaged old file within STRATUM_SCRUB_NIGHTS runs."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from engine.settings import Settings
from engine.tiers import LAKE_TABLES
from lake import Lake
from sync import jobs
from sync.rollups import refresh_rollups
from sync.verify import VerifyResult, scrub_slice
from tests.sync.lakesync import FIRST_DAY, TODAY, ingest_rows, job_settings, load_cohort

NIGHTS = 3


def test_every_file_is_hashed_within_the_nights_and_a_run_hashes_a_bounded_share() -> None:
    rng = random.Random(12)
    last: dict[str, int | None] = {f"old-{n}": None for n in range(40)}
    hashed_at: dict[str, list[int]] = {}
    serial = 0
    for run in range(1, 60):
        new = [path for path, seen in last.items() if seen is None]
        old = len(last) - len(new)
        chosen = scrub_slice(last, run, NIGHTS)
        assert set(new) <= chosen
        # The share, plus files falling due (at most what an earlier run hashed beyond it).
        assert len(chosen) - len(new) <= math.ceil(old / NIGHTS) + len(
            [p for p, seen in last.items() if seen is not None and seen <= run - NIGHTS]
        )
        for path in chosen:
            last[path] = run
            hashed_at.setdefault(path, []).append(run)
        for path in rng.sample(sorted(last), rng.randint(0, 6)):  # compaction, replaced days
            del last[path]
        for _ in range(rng.randint(0, 8)):  # the night's sync
            serial += 1
            last[f"new-{serial}"] = None
        for path, seen in last.items():
            assert seen is None or run + 1 - seen <= NIGHTS, (path, hashed_at[path])
    steady = {f"f{n}": n % NIGHTS + 1 for n in range(30)}  # runs 1, 2, 3
    assert len(scrub_slice(steady, NIGHTS + 1, NIGHTS)) == 10  # no new files: a third


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    base = job_settings(tmp_path, tier_older_than_days=1)
    return replace(base, lake=replace(base.lake, sync_batch_days=1, scrub_nights=NIGHTS))


def lake_file_counts(settings: Settings) -> dict[str, int]:
    lake = Lake(settings.lake.path)
    return {table: len(lake.entries(table)) for table in LAKE_TABLES}


def shares(counts: dict[str, int]) -> int:
    """Files a run hashes of those already hashed (rounded up per table)."""
    return sum(math.ceil(count / NIGHTS) for count in counts.values())


def scrubbed_runs(url: str, settings: Settings) -> dict[str, int | None]:
    """The run that last hashed each current lake file (records of replaced files stay until
    maintenance prunes them)."""
    lake = Lake(settings.lake.path)
    current = {
        f"{table}/{relative}" for table in LAKE_TABLES for relative, _ in lake.entries(table)
    }
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tier || '/' || path, scrubbed FROM lake_files").fetchall()
    return {path: run for path, run in rows if path in current}


def night(url: str, settings: Settings) -> VerifyResult:
    result = jobs.verify_job(url, settings.lake)
    assert isinstance(result.detail, VerifyResult)
    return result.detail


def test_a_night_hashes_new_files_and_a_share_and_finds_old_damage_in_time(
    warm_url: str, settings: Settings
) -> None:
    load_cohort(warm_url)
    jobs.sync_job(warm_url, settings.lake, today=TODAY)
    counts = lake_file_counts(settings)
    files = sum(counts.values())
    first = night(warm_url, settings)
    assert (first.files, first.hashed, first.damaged) == (files, files, [])  # all new
    assert None not in scrubbed_runs(warm_url, settings).values()
    with psycopg.connect(warm_url) as conn:
        when = conn.execute(
            "SELECT count(*) FILTER (WHERE scrubbed_at IS NULL), "
            "count(*) FILTER (WHERE scrubbed_at > now() - interval '1 hour') "
            "FROM lake_files WHERE scrubbed IS NOT NULL"
        ).fetchone()
    assert when == (0, files)

    second = night(warm_url, settings)
    assert (second.files, second.hashed) == (files, shares(counts))
    assert second.hashed < files / 2

    # A late day: the sync rewrites or adds a few files, new to the scrub.
    late = FIRST_DAY + timedelta(days=1)
    ingest_rows(warm_url, [(f"{late}T12:00:30+00:00", 1, "heart_rate", 61.0)])
    refresh_rollups(warm_url)
    jobs.sync_job(warm_url, settings.lake, today=TODAY)
    new = [path for path, run in scrubbed_runs(warm_url, settings).items() if run is None]
    assert new
    counts = lake_file_counts(settings)
    for path in new:
        counts[path.split("/")[0]] -= 1
    third = night(warm_url, settings)
    assert third.hashed == len(new) + shares(counts)

    # Damage that keeps the size: only hashing finds it.
    lake = Lake(settings.lake.path)
    (relative, victim) = next(
        (r, f) for r, f in lake.entries("raw") if f.user_id == 2 and f.first_day == FIRST_DAY
    )
    data = bytearray(Path(victim.path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(victim.path).write_bytes(bytes(data))
    found_on = None
    for run in range(1, NIGHTS + 1):
        expected = scrubbed_runs(warm_url, settings)[f"raw/{relative}"]
        done = night(warm_url, settings)
        if done.damaged:
            assert {(u, t, d) for u, t, d, _ in done.damaged} == {(2, "raw", FIRST_DAY)}
            assert "content differs" in done.damaged[0][3]
            found_on = run
            break
        assert scrubbed_runs(warm_url, settings)[f"raw/{relative}"] == expected  # not hashed yet
    assert found_on is not None
