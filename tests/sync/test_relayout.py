"""`stratum maintain --relayout`: a lake of the pre-issue-12 day layout is refused until it is
rewritten, then serves, verifies and syncs as if it had been written in month partitions."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from deltalake import write_deltalake

from engine.settings import Settings
from lake import Lake
from lake.layout import LayoutError
from sync import jobs
from sync.relayout import relayout_lake
from tests.lake.builders import read_all
from tests.sync.lakesync import (
    TODAY,
    assert_lake_equals_source,
    ingest_rows,
    job_settings,
    load_cohort,
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return job_settings(tmp_path, tier_older_than_days=1)


def as_old_layout(lake: Lake, table: str) -> None:
    """Rewrite a table as a pre-issue-12 lake held it: partitioned by user_id/date."""
    rows = read_all(lake, table).drop_columns(["month"])
    folder = Path(lake.table_dir(table))
    shutil.rmtree(folder)
    write_deltalake(str(folder), rows, partition_by=["user_id", "date"])


def test_an_old_layout_lake_is_refused_then_relayed_out(warm_url: str, settings: Settings) -> None:
    load_cohort(warm_url)
    jobs.sync_job(warm_url, settings.lake, today=TODAY)
    lake = Lake(settings.lake.path)
    for table in ("raw", "agg_1m"):
        as_old_layout(lake, table)
    ingest_rows(warm_url, [(f"{TODAY}T01:00:00Z", 1, "heart_rate", 70.0)])

    with pytest.raises(LayoutError, match="stratum maintain --relayout"):
        jobs.sync_job(warm_url, settings.lake, today=TODAY, lake=Lake(settings.lake.path))

    done = relayout_lake(warm_url, Lake(settings.lake.path))

    assert [d.tier for d in done] == ["raw", "agg_1m"]
    fresh = Lake(settings.lake.path)
    assert_lake_equals_source(warm_url, fresh, before=TODAY - timedelta(days=1))  # synced
    assert jobs.verify_job(warm_url, settings.lake).status == "ok"  # records follow the files
    assert jobs.sync_job(warm_url, settings.lake, today=TODAY).status == "ok"
    assert relayout_lake(warm_url, fresh) == []
