"""`stratum bench --scale ci` end to end: the suite runs and its report is complete.

A smoke test, part of `make test`: it checks that every workload ran on every backend that
is available and that the report has every section with numbers in it. It never asserts a
timing: those are for reading, not for failing a build on a busy machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.cli import main
from api.commands import BENCH_SCALES, COHORT_SCALE
from benchmarks.presets import PRESETS
from benchmarks.report import PLOT_FILE, SECTIONS
from sync.localdb import stop_local_postgres


def test_cli_scales_are_the_presets() -> None:
    assert set(BENCH_SCALES) == {*PRESETS, COHORT_SCALE}


@pytest.fixture(scope="module")
def ci_home() -> Iterator[Path]:
    # The private server's home lives outside pytest's 0700 temp tree: when we run as root,
    # the postgres account must reach it (as in tests/conftest.py).
    home = Path(tempfile.mkdtemp(prefix="stratum-test-bench-"))
    os.chmod(home, 0o755)
    try:
        yield home
    finally:
        stop_local_postgres(home / "bench-ci")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def ci_run(ci_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    out = tmp_path_factory.mktemp("bench") / "out"
    mp = pytest.MonkeyPatch()
    mp.setenv("STRATUM_HOME", str(ci_home))
    try:
        assert main(["bench", "--scale", "ci", "--out", str(out)]) == 0
        yield out, json.loads((out / "results.json").read_text())
    finally:
        mp.undo()


def test_the_bench_stops_the_server_it_started(ci_run: tuple[Path, dict], ci_home: Path) -> None:
    # Its dataset's private PostgreSQL is started for the run, and found again by the next.
    assert not (ci_home / "bench-ci" / "pg" / "postmaster.pid").exists()


def test_report_has_every_section_and_plot(ci_run: tuple[Path, dict]) -> None:
    out, _ = ci_run
    report = (out / "report.md").read_text()
    for section in SECTIONS:
        assert f"\n{section}\n" in report, section
    assert (out / PLOT_FILE).stat().st_size > 10_000
    assert f"]({PLOT_FILE})" in report


def test_every_available_backend_answered_every_case(ci_run: tuple[Path, dict]) -> None:
    _, results = ci_run
    available = {k for k, b in results["backends"].items() if b["available"]}
    assert {"warm_raw", "warm_rollups", "engine"} <= available
    groups = {case["group"] for case in results["cases"]}
    assert {"span", "recent", "deep paging"} <= groups
    for case in results["cases"]:
        for key, result in case["results"].items():
            if key not in available:
                assert result["status"] == "not available" and result["note"]
                continue
            assert result["status"] in ("ok", "n/a"), (case["id"], key, result["note"])
            if result["status"] == "ok":
                assert result["runs"] >= 1 and result["median_s"] > 0, (case["id"], key)
                assert result["p95_s"] >= result["median_s"]
                assert "row counts differ" not in result["note"], (case["id"], key)
        ok_rows = {r["rows"] for r in case["results"].values() if r["status"] == "ok"}
        assert len(ok_rows) == 1 and ok_rows.pop() > 0, case["id"]


def test_limit_backend_answers_every_lake_case(ci_run: tuple[Path, dict]) -> None:
    """The limit (one compacted file per participant) answers what bare DuckDB answers,
    with the same rows (checked above), and the report divides the engine by it."""
    out, results = ci_run
    if not results["dataset"]["lake_synced"]:
        pytest.skip("no lake")
    assert results["backends"]["limit"]["available"], results["backends"]["limit"]["note"]
    build = results["limit_build"]
    assert build["raw"]["rows"] > 0 and build["raw"]["users"] >= results["dataset"]["main_users"]
    for case in results["cases"]:
        lake = case["results"]["lake_raw"]["status"]
        assert case["results"]["limit"]["status"] == lake, case["id"]
    report = (out / "report.md").read_text()
    assert "engine ÷ limit" in report and "÷ limit" in report
    target = next(line for line in report.splitlines() if "1.3x the limit" in line)
    assert re.search(r"\d\.\d\dx", target), target


def test_side_workloads_have_numbers(ci_run: tuple[Path, dict]) -> None:
    out, results = ci_run
    ingest = results["ingest_sync"]["ingest"]
    assert ingest["rows"] > 0 and ingest["rows_per_s"] > 0
    warm = results["storage"]["warm"]["raw_data"]
    assert warm["bytes"] > 0 and warm["rows"] > 0
    engine = results["concurrency"]["results"]["engine"]
    assert engine["ok"] == engine["requests"] and engine["p95_s"] > 0
    if results["backends"]["http_arrow"]["available"]:
        assert results["budget"]["status"] == "ok"
        assert results["budget"]["peak_rss_bytes"] > 0
        assert isinstance(results["budget"]["passed"], bool)
    columnstore = results["columnstore"]
    if results["machine"]["timescaledb"]:  # compressed chunks take less than row-store ones
        assert columnstore["status"] == "ok"
        assert 0 < columnstore["columnstore"]["bytes"] < columnstore["rowstore"]["bytes"]
        assert columnstore["columnstore"]["chunks"] > 0
    else:
        assert columnstore["status"] == "not available" and columnstore["note"]
    if results["backends"]["http_json"]["available"]:
        rendering = results["json_rendering"]  # the server's JSON pages, rows per second
        assert rendering["status"] == "ok" and rendering["rows_per_s"] > 0, rendering
        report = (out / "report.md").read_text()
        target = next(line for line in report.splitlines() if "rows/s rendered" in line)
        assert re.search(r"\d[kM]? rows/s \|", target), target
        # The explorer page's first chart, timed in headless Chromium (not asserted).
        explorer = results["explorer"]
        assert explorer["status"] == "ok", explorer
        assert explorer["median_ms"] > 0 and explorer["resolution"] in ("1m", "1h", "1d")
        assert explorer["points"][0] > 0
    # The targets' pairs, each measured alone, alternating (not asserted: read).
    report = (out / "report.md").read_text()
    for pair in results["side_by_side"]:
        if results["backends"][pair["measured"]]["available"]:
            assert pair["status"] == "ok", pair
            assert pair["ratio"] > 0 and len(pair["times_s"]["measured"]) == pair["rounds"]
    targets = [line for line in report.splitlines() if "side by side |" in line]
    assert len(targets) == len(results["side_by_side"]), targets
    assert all(re.search(r"\| \d+\.\d\dx \|", line) for line in targets if "/data" not in line)
    within = next(line for line in report.splitlines() if "of the fastest backend" in line)
    assert re.search(r"\| \d+ of \d+ \|", within), within
    refresh = next(line for line in report.splitlines() if "rollup refresh >=" in line)
    assert re.search(r"\d[kM]? raw rows/s \|", refresh), refresh
    if results["dataset"]["lake_synced"]:
        assert results["ingest_sync"]["sync"]["ok"]
        assert results["storage"]["lake"]["raw"]["bytes"] > 0
    # Every target row carries a measurement or says why not.
    report = (out / "report.md").read_text()
    targets = report.split("## Targets", 1)[1].split("## Main table", 1)[0]
    rows = [line for line in targets.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) > 4
    for line in rows[1:]:
        measured, verdict = (cell.strip() for cell in line.split("|")[2:4])
        assert verdict in ("met", "not met", "n/a"), line
        assert verdict == "n/a" or re.search(r"\d", measured), line
