"""The cohort bench (issue 12, point 2) at a tiny shape: built through backfill, resumed
without loading anything twice, measured and reported (the full shape takes hours)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from benchmarks import cohort_build
from benchmarks.cohort import run_cohort
from benchmarks.cohort_build import EVERY_S, METRICS, SEED, WARM_DAYS, Shape, _archive
from engine.errors import SyncFailed
from engine.settings import load_settings
from sync.generate import generate_cohort
from sync.localdb import ensure_local_postgres, stop_local_postgres

SHAPE = Shape(users=3, days=6)


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    # Outside pytest's 0700 temp tree: the postgres account must reach it when we are root.
    path = Path(tempfile.mkdtemp(prefix="stratum-test-cohort-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        stop_local_postgres(path / "cohort")
        shutil.rmtree(path, ignore_errors=True)


def run(home: Path, out: Path, scan: bool) -> dict:
    settings = load_settings({"STRATUM_HOME": str(home)})
    report = run_cohort(settings, shape=SHAPE, home=home / "cohort", out_dir=out, scan=scan)
    assert report == out / "report.md"
    return json.loads((out / "results.json").read_text())


def test_the_cohort_is_built_through_backfill_then_reported(home: Path, tmp_path: Path) -> None:
    results = run(home, tmp_path / "first", scan=True)
    per_day = len(METRICS) * 1440
    lake = results["lake"]["tiers"]
    # History in the lake, one file per participant-month of the fine tiers (backfill writes
    # whole months); the last days warm.
    history = [SHAPE.end - timedelta(days=n) for n in range(WARM_DAYS, SHAPE.days)]
    assert lake["raw"]["files"] == SHAPE.users * len({(d.year, d.month) for d in history})
    assert 0 < lake["raw"]["rows"] <= SHAPE.users * (SHAPE.days - WARM_DAYS) * per_day
    server = ensure_local_postgres(home / "cohort")
    with psycopg.connect(server.url) as conn:
        warm = conn.execute("SELECT count(DISTINCT (user_id, ts::date)) FROM raw_data").fetchone()
    stop_local_postgres(home / "cohort")
    assert warm == (SHAPE.users * WARM_DAYS,)
    # The scan streamed every row, lake and warm, under the budget.
    scan = results["scan"]
    assert scan["rows"] > lake["raw"]["rows"] and scan["peak_rss_bytes"] < 2**30
    report = (tmp_path / "first" / "report.md").read_text()
    assert "| catalog + planning, one participant, p50 <= 5 ms |" in report
    assert (tmp_path / "first" / "cohort_targets.png").stat().st_size > 5_000


def test_a_second_run_loads_nothing_again(home: Path, tmp_path: Path) -> None:
    first = run(home, tmp_path / "first", scan=False)["build"]  # builds, unless built above
    results = run(home, tmp_path / "again", scan=False)
    assert results["build"]["runs"] == first["runs"] + 1
    assert results["build"]["backfill_seconds"] == first["backfill_seconds"]
    assert "scan" not in results


def test_an_archive_holds_its_rows_in_key_order(tmp_path: Path) -> None:
    """Each participant's series one after another, in time order: the backfill then sorts
    nothing (the archive's rows are the ones the generator makes, only ordered)."""
    path, rows = _archive(tmp_path, SHAPE, [2, 3])
    table = pq.read_table(path)
    assert table.num_rows == rows > 0
    order = pc.sort_indices(
        table, [("user_id", "ascending"), ("metric", "ascending"), ("ts", "ascending")]
    )
    assert order.to_pylist() == list(range(rows))
    generated = pa.concat_tables(
        generate_cohort(
            2,
            SHAPE.history_days,
            SHAPE.first_day,
            seed=SEED,
            metrics=list(METRICS),
            every_s=EVERY_S,
            first_user_id=2,
        )
    )
    assert generated.sort_by(
        [("user_id", "ascending"), ("metric", "ascending"), ("ts", "ascending")]
    ).equals(table)


def test_a_build_stopped_by_a_failed_backfill_leaves_no_archive(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Archives are generated ahead of the backfill; one that fails must not strand them."""
    calls = []

    def failing(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise SyncFailed("another lake job runs")

    monkeypatch.setattr(cohort_build, "backfill_files", failing)
    folder = home / "stopped"
    try:
        with pytest.raises(SyncFailed):
            cohort_build.build(folder, Shape(users=12, days=4))
    finally:
        stop_local_postgres(folder)
    assert len(calls) == 1
    assert list(folder.glob("archive-*")) == []
