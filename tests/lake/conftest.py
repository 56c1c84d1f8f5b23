"""Fixtures of the lake tests: a fresh lake, in tmp_path and on the local S3 server."""

from __future__ import annotations

from pathlib import Path

import pytest

from lake import Lake


@pytest.fixture
def lake(lake_root: str | Path) -> Lake:
    return Lake(lake_root)


@pytest.fixture
def local_lake(tmp_path: Path) -> Lake:
    """For tests that damage or inspect files on disk directly."""
    return Lake(tmp_path / "lake")
