"""Fixtures of the lake tests: a fresh lake in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from lake import Lake


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path / "lake")
