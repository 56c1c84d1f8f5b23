"""The jobs on a lake on S3 (the local server): the nightly job (refresh, sync, tier,
compress, maintain, verify), rehydration of a tiered day from S3, and verify + repair of
damaged objects; the engine paging through the lake on both storages. The lake's own tests
and the serving-side integrity tests run on S3 through the `lake_root` fixture."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from api.app import create_app
from engine.settings import Settings
from lake import TIERS, Lake
from lake.integrity import file_digest
from sync import jobs
from sync.export import sync_to_lake
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.runs import recent_runs
from sync.verify import RepairResult, VerifyResult
from tests.api.conftest import admin_client, api_settings
from tests.api.conftest import load_cohort as load_api_cohort
from tests.integration.test_lake_integrity import BOTH_DAYS, LakeObject, answer, truncate
from tests.sync.lakesync import (
    FIRST_DAY,
    TODAY,
    assert_lake_equals_source,
    day_state,
    ingest_rows,
    job_settings,
    lake_days,
    load_cohort,
)


@pytest.fixture
def settings(tmp_path: Path, s3_root: str) -> Settings:
    base = job_settings(tmp_path, tier_older_than_days=3)
    return replace(base, lake=replace(base.lake, path=s3_root))


def raw_object(lake: Lake, user_id: int) -> LakeObject:
    start = datetime(FIRST_DAY.year, FIRST_DAY.month, FIRST_DAY.day, tzinfo=UTC)
    (path,) = lake.files("raw", [user_id], start, start + timedelta(days=1)).paths
    return LakeObject(lake.storage, path)


def test_nightly_job_on_s3_then_a_late_row_rehydrates_a_tiered_day(
    warm_url: str, settings: Settings
) -> None:
    ingest_tables(warm_url, generate_cohort(2, 5, FIRST_DAY, every_s=300))

    result = jobs.nightly_job(warm_url, settings.lake, today=TODAY)

    assert result.status == "ok", result.error
    runs = {r.job: r for r in recent_runs(warm_url)}
    assert all(r.status == "ok" for r in runs.values()), runs
    assert runs["tier"].days == 4
    lake = Lake(settings.lake.path)
    assert lake.root.startswith("s3://") and not Path(lake.root).exists()
    # Every day reads back from S3 as verified at sync (tiered days included).
    recorded = lake_days(warm_url)
    assert len(recorded) == 4 * 8
    for tier in TIERS:
        pairs = {(u, d): (r, c) for (u, t, d), (r, c, _) in recorded.items() if t == tier}
        assert lake.day_stats(tier, pairs) == pairs
    # Every committed object is recorded with its size and SHA-256.
    with psycopg.connect(warm_url) as conn:
        records = conn.execute("SELECT tier, path, size, sha256 FROM lake_files").fetchall()
    assert records
    for tier, relative, size, digest in records:
        path = f"{lake.table_dir(tier)}/{relative}"
        assert lake.storage.stat(path) is not None and lake.storage.stat(path)[0] == size
        assert file_digest(lake.storage, path) == digest

    # A late row into a tiered day: its rows come back from S3 (the location tiering recorded).
    day = (1, FIRST_DAY)
    assert day_state(warm_url)[day][3] is not None
    late = datetime(FIRST_DAY.year, FIRST_DAY.month, FIRST_DAY.day, 23, 59, 59, tzinfo=UTC)
    ingest_rows(warm_url, [(late.isoformat(), 1, "heart_rate", 123.0)])
    assert day_state(warm_url)[day][3] is None
    with psycopg.connect(warm_url) as conn:
        (rows,) = conn.execute(
            "SELECT count(*) FROM raw_data WHERE user_id = 1 AND ts >= %s AND ts <= %s",
            (late.replace(hour=0, minute=0, second=0), late),
        ).fetchone()  # type: ignore[misc]
    assert rows == recorded[(1, "raw", FIRST_DAY)][0] + 1  # the day from S3, and the late row


def test_verify_and_repair_on_s3(warm_url: str, settings: Settings) -> None:
    # One day per sync batch: one raw file per participant-day, so damage stays one day's.
    settings = replace(settings, lake=replace(settings.lake, sync_batch_days=1))
    load_cohort(warm_url)
    jobs.sync_job(warm_url, settings.lake, today=TODAY)
    assert jobs.verify_job(warm_url, settings.lake).status == "ok"
    lake = Lake(settings.lake.path)
    truncate(raw_object(lake, 1))

    verified = jobs.verify_job(warm_url, settings.lake)
    assert verified.status == "failed"
    assert isinstance(verified.detail, VerifyResult)
    assert {(u, t, d) for u, t, d, _ in verified.detail.damaged} == {(1, "raw", FIRST_DAY)}

    repaired = jobs.repair_job(warm_url, settings.lake, today=TODAY)
    assert isinstance(repaired.detail, RepairResult)
    assert repaired.detail.requeued == [(1, "raw", FIRST_DAY)]
    assert repaired.status == "ok", repaired.error
    assert jobs.verify_job(warm_url, settings.lake).status == "ok"
    assert_lake_equals_source(warm_url, lake, before=TODAY - timedelta(days=1))


def test_engine_pages_through_the_lake_alike_on_both_storages(
    warm_url: str, tmp_path: Path, lake_root: str | Path
) -> None:
    """Cursor pages stop scans early (a registered S3 dataset must then be dropped cleanly)
    and concatenate to the warm store's own answer; several metrics take the sorted path."""
    load_api_cohort(warm_url)
    settings = api_settings(tmp_path, STRATUM_LAKE_PATH=str(lake_root))
    status, warm_only = answer(settings, warm_url, {**BOTH_DAYS, "resolution": "raw"})
    assert status == 200 and not warm_only["meta"]["has_more"]
    sync_to_lake(
        warm_url, Lake(settings.lake.path), grace_days=1, batch_days=8, today=date(2024, 1, 3)
    )
    with admin_client(create_app(settings, warm_url), warm_url) as client:
        pages: list[object] = []
        extra: dict[str, str] = {}
        while True:
            params = {**BOTH_DAYS, "resolution": "raw", "page_size": "700", **extra}
            body = client.get("/data", params=params).json()
            pages += body["data"]
            assert set(body["meta"]["sources"]) <= {"lake", "warm"}
            if body["meta"]["next"] is None:
                break
            extra = {"cursor": body["meta"]["next"]}
    assert pages == warm_only["data"] and len(pages) > 3 * 700
