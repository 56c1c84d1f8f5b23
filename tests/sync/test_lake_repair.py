"""Issue 11: jobs do not crash-loop on a damaged lake. `tier`, `sync`, `maintain` skip a
damaged day, name it, queue it for repair and finish the rest (status failed, so the CLI
exits non-zero); `verify` scrubs the whole lake; `repair` re-exports what the warm store
holds and lists what only a backup can restore."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from engine.errors import SyncFailed
from engine.settings import Settings
from lake import Lake, partition_of
from lake.read import read_partition_file
from sync import jobs
from sync.export import VerificationFailed, sync_to_lake
from sync.lakefiles import damage_report
from sync.verify import RepairResult, VerifyResult
from tests.lake.builders import ALL_TIME, with_partition_column
from tests.sync.lakesync import (
    FIRST_DAY,
    TODAY,
    assert_lake_equals_source,
    ingest_rows,
    job_settings,
    load_cohort,
)

DAMAGED = (1, FIRST_DAY)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    base = job_settings(tmp_path, tier_older_than_days=1)
    # One day per sync batch: one raw file per participant-day, so damage stays one day's.
    return replace(base, lake=replace(base.lake, sync_batch_days=1))


def raw_file(settings: Settings, user_id: int = 1, several: bool = False) -> Path:
    """The raw file holding the user's first day (its month's folder, with `several`)."""
    folder = settings.lake.path / "raw" / f"user_id={user_id}" / f"month={FIRST_DAY:%Y-%m}"
    if several:
        return folder
    lake = Lake(settings.lake.path)
    (found,) = [
        Path(f.path)
        for f in lake.files("raw", [user_id], *ALL_TIME).files
        if f.first_day == FIRST_DAY
    ]
    return found


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damage_rows(url: str) -> set[tuple[int, str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT user_id, tier, day::text FROM lake_damage").fetchall()
    return {(u, t, d) for u, t, d in rows}


def test_tier_skips_a_truncated_day_names_it_and_finishes_the_rest(
    warm_url: str, settings: Settings
) -> None:
    load_cohort(warm_url)
    jobs.sync_job(warm_url, settings.lake, today=TODAY)
    truncate(raw_file(settings))

    result = jobs.tiering_job(warm_url, settings.lake, today=TODAY)
    assert result.status == "failed"
    assert result.error is not None and f"user 1 {FIRST_DAY}" in result.error
    with pytest.raises(SyncFailed, match=f"user 1 {FIRST_DAY}"):
        jobs.require_ok(result)
    # The next run does not trip over it again: the day waits for its repair.
    assert jobs.tiering_job(warm_url, settings.lake, today=TODAY).status == "ok"
    with psycopg.connect(warm_url) as conn:
        row = conn.execute("SELECT count(*) FROM day_state WHERE tiered_seq IS NOT NULL").fetchone()
    assert row is not None and row[0] == 8 - 1  # 2 users x 4 synced days, less the damaged
    assert (1, "raw", str(FIRST_DAY)) in damage_rows(warm_url)

    # The day was not tiered, so the warm store re-exports it: the next sync repairs it.
    jobs.sync_job(warm_url, settings.lake, today=TODAY)
    assert damage_rows(warm_url) == set()
    assert jobs.verify_job(warm_url, settings.lake).status == "ok"


def test_verify_finds_damage_and_repair_reexports_or_lists_it(
    warm_url: str, settings: Settings
) -> None:
    load_cohort(warm_url)
    jobs.sync_job(warm_url, settings.lake, today=TODAY)
    assert jobs.verify_job(warm_url, settings.lake).status == "ok"
    # User 2's first day is tiered: the lake holds its only copy.
    with psycopg.connect(warm_url, autocommit=True) as conn:
        conn.execute("UPDATE day_state SET tiered_seq = change_seq WHERE user_id = 2")
    raw_file(settings, 1).write_bytes(raw_file(settings, 2).read_bytes())  # another day's file
    truncate(raw_file(settings, 2))

    verified = jobs.verify_job(warm_url, settings.lake)
    assert verified.status == "failed"
    assert isinstance(verified.detail, VerifyResult)
    assert {(u, t, d) for u, t, d, _ in verified.detail.damaged} == {
        (1, "raw", FIRST_DAY),
        (2, "raw", FIRST_DAY),
    }
    assert len(damage_report(warm_url, Lake(settings.lake.path))) == 2

    repaired = jobs.repair_job(warm_url, settings.lake, today=TODAY)
    assert isinstance(repaired.detail, RepairResult)
    assert repaired.detail.requeued == [(1, "raw", FIRST_DAY)]
    assert [(u, t, d) for u, t, d, _ in repaired.detail.backup_only] == [(2, "raw", FIRST_DAY)]
    assert repaired.status == "failed" and f"user 2 {FIRST_DAY}" in (repaired.error or "")
    assert damage_rows(warm_url) == {(2, "raw", str(FIRST_DAY))}
    assert jobs.verify_job(warm_url, settings.lake).status == "ok"  # nothing new found


def test_sync_and_maintain_refuse_a_log_that_lost_commits(
    warm_url: str, settings: Settings
) -> None:
    load_cohort(warm_url)
    jobs.sync_job(warm_url, settings.lake, today=TODAY)
    newest = sorted((settings.lake.path / "raw" / "_delta_log").glob("*.json"))[-1]
    newest.unlink()

    for job in (jobs.sync_job, jobs.maintain_job):
        with pytest.raises(SyncFailed, match="commits were lost"):
            job(warm_url, settings.lake)
    lost = damage_report(warm_url, Lake(settings.lake.path))
    assert lost and {t for _, t, _, _ in lost} == {"raw"}

    # verify records the lost days; repair re-exports them from the warm store.
    assert jobs.verify_job(warm_url, settings.lake).status == "failed"
    assert jobs.repair_job(warm_url, settings.lake, today=TODAY).status == "ok"
    assert damage_report(warm_url, Lake(settings.lake.path)) == []
    assert jobs.verify_job(warm_url, settings.lake).status == "ok"
    assert_lake_equals_source(warm_url, Lake(settings.lake.path), TODAY - timedelta(days=1))


def test_the_schedulers_kept_lake_refuses_a_log_that_lost_commits_too(
    warm_url: str, settings: Settings
) -> None:
    # The scheduler's Lake cached the newest version before the commit was lost: it must not
    # vouch for that version from its cache.
    load_cohort(warm_url)
    kept = Lake(settings.lake.path)
    jobs.sync_job(warm_url, settings.lake, today=TODAY, lake=kept)
    newest = sorted((settings.lake.path / "raw" / "_delta_log").glob("*.json"))[-1]
    newest.unlink()

    with pytest.raises(SyncFailed, match="commits were lost"):
        jobs.sync_job(warm_url, settings.lake, lake=kept)
    with pytest.raises(SyncFailed, match="commits were lost"):
        jobs.maintain_job(warm_url, settings.lake, kept)


def test_maintain_skips_a_damaged_partition_names_it_and_compacts_the_rest(
    warm_url: str, settings: Settings
) -> None:
    load_cohort(warm_url)
    jobs.sync_job(warm_url, settings.lake, today=TODAY)
    lake = Lake(settings.lake.path)
    # Two crowded partitions (as another Delta writer could leave them); one file truncated.
    for user_id in (1, 2):
        path = str(raw_file(settings, user_id))
        rows = read_partition_file(
            lake.storage, "raw", path, partition_of("raw", user_id, FIRST_DAY)
        )
        rows = with_partition_column("raw", rows)
        for part in (rows.slice(0, 100), rows.slice(100)):
            write_deltalake(
                lake.table_dir("raw"),
                part,
                mode="append",
                storage_options=lake.storage.storage_options,
            )
    folder = raw_file(settings, 1, several=True)
    truncate(max(folder.glob("*.parquet"), key=lambda p: p.stat().st_mtime_ns))

    result = jobs.maintain_job(warm_url, settings.lake)

    assert result.status == "failed"
    assert f"user 1 {FIRST_DAY} raw" in (result.error or "")
    compacted = result.detail.compacted["raw"]  # type: ignore[attr-defined]
    assert compacted.partitions == 1  # user 2's
    assert (1, "raw", str(FIRST_DAY)) in damage_rows(warm_url)


def test_verify_adopts_files_committed_before_hashes_were_recorded(
    warm_url: str, settings: Settings
) -> None:
    load_cohort(warm_url)
    jobs.sync_job(warm_url, settings.lake, today=TODAY)
    with psycopg.connect(warm_url, autocommit=True) as conn:
        recorded = conn.execute("SELECT tier, path, sha256 FROM lake_files").fetchall()
        conn.execute("DELETE FROM lake_files")  # as a lake synced before migration 005

    assert jobs.verify_job(warm_url, settings.lake).status == "ok"

    with psycopg.connect(warm_url) as conn:
        adopted = conn.execute("SELECT tier, path, sha256 FROM lake_files").fetchall()
    lake = Lake(settings.lake.path)
    current = {
        (t, path) for t in ("raw", "agg_1m", "agg_1h", "agg_1d") for path, _ in lake.entries(t)
    }
    assert {(t, path) for t, path, _ in adopted} == current
    assert set(adopted) <= set(recorded)  # the very hashes recorded at commit


class RottingLake(Lake):
    """Fault injection: user 1's first raw day is truncated right after it is committed."""

    def replace_days(self, tier: str, data: pa.Table, days: Iterable[tuple[int, date]]) -> int:
        version = super().replace_days(tier, data, days)
        if tier == "raw" and (1, FIRST_DAY) in set(days):
            for _, lake_file in self.added_files("raw", version):
                if lake_file.user_id == 1 and lake_file.first_day == FIRST_DAY:
                    truncate(Path(lake_file.path))
        return version


def test_sync_fails_a_day_that_does_not_read_back_and_finishes_the_rest(
    warm_url: str, settings: Settings
) -> None:
    load_cohort(warm_url)
    lake = RottingLake(settings.lake.path)
    with pytest.raises(VerificationFailed, match=f"user 1 {FIRST_DAY} raw") as failed:
        sync_to_lake(warm_url, lake, grace_days=1, batch_days=1, today=TODAY)  # a file a day
    assert failed.value.result.failed == [(1, FIRST_DAY, "raw")]
    assert failed.value.result.days == 8 - 1


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, flip_byte], ids=["truncated", "flipped byte"])
def test_late_data_into_a_tiered_day_whose_lake_copy_is_damaged_is_refused(
    warm_url: str, settings: Settings, damage: Callable[[Path], None]
) -> None:
    load_cohort(warm_url)
    jobs.sync_job(warm_url, settings.lake, today=TODAY)
    assert jobs.tiering_job(warm_url, settings.lake, today=TODAY).status == "ok"
    damage(raw_file(settings, 1))
    with pytest.raises(SyncFailed, match=f"user 1's tiered days {FIRST_DAY}"):
        ingest_rows(warm_url, [(f"{FIRST_DAY}T12:00:00Z", 1, "heart_rate", 70.0)])
