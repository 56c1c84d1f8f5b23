"""Fixtures of the sync tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from lake import Lake
from tests.sync.lakesync import load_cohort, make_lake, run_sync


@pytest.fixture
def lake(flavour_url: str, tmp_path: Path) -> Lake:
    """The small cohort, rolled up and synced to a lake, on each warm-store flavour."""
    load_cohort(flavour_url)
    lake = make_lake(tmp_path)
    run_sync(flavour_url, lake)
    return lake
