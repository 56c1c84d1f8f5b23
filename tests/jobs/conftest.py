"""Fixtures of the cohort-job tests: a small cohort, two of its three days in the lake."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from engine.settings import Settings, load_settings
from lake import Lake
from sync.access import create_cohort
from sync.export import sync_to_lake
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.rollups import refresh_rollups

START = date(2024, 1, 1)
DAYS = 3  # 01-01 and 01-02 reach the lake; 01-03 stays in the warm store
END = START + timedelta(days=DAYS)
LAKE_DAYS = [START, START + timedelta(days=1)]
COHORT_USERS = (1, 2)  # of 3 participants


def settings_for(home: Path, **extra: str) -> Settings:
    env = {
        "STRATUM_HOME": str(home),
        "STRATUM_LAKE_PATH": str(home / "lake"),
        "STRATUM_MEMORY_BUDGET": "1GiB",
        "STRATUM_DUCKDB_THREADS": "2",
        # The engine's 1d answers from the lake too (small ones come from the warm store by
        # default): the jobs are compared with what the lake holds.
        "STRATUM_WARM_ROLLUP_ROWS": "0",
        **extra,
    }
    return load_settings(env)


def make_lake_cohort(warm_url: str, settings: Settings) -> Settings:
    """3 participants x 3 days of heart rate, steps and HRV once a minute; two days synced;
    cohort 'study' = participants 1 and 2."""
    ingest_tables(
        warm_url,
        generate_cohort(3, DAYS, START, metrics=["heart_rate", "steps", "hrv"], every_s=60),
    )
    refresh_rollups(warm_url)
    lake = Lake(settings.lake.path)
    # One day per batch: one file per participant-day, so a damaged file is one day's.
    sync_to_lake(warm_url, lake, grace_days=1, batch_days=1, today=END)
    create_cohort(warm_url, "study", COHORT_USERS)
    return settings


@pytest.fixture
def lake_cohort(warm_url: str, tmp_path: Path) -> Settings:
    return make_lake_cohort(warm_url, settings_for(tmp_path / "home"))
