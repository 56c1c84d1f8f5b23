"""The `cohort` preset (issue 12, point 2): a study-sized cohort built through backfill, and
the issue's cohort targets measured on it side by side. Not a test, never asserted.

    stratum bench --scale cohort [--out DIR] [--rebuild]
    python -m benchmarks.cohort [--users 500] [--days 730] [--home DIR] [--out DIR] [--rebuild]

The cohort (500 participants x 730 days of three metrics once a minute, 1.12 billion raw
rows) is built through backfill, resumably: benchmarks/cohort_build.py.

Measured in one run (the figures a 16-core, 128 GB server should be sized from):
- one participant x heart rate x 1 year raw, in the engine; and the same query at `medium`
  when that dataset is built (`stratum bench --scale medium`) or `--medium` builds it;
- catalog + planning of that query (the /plan stage timings), p50;
- every participant x 2 years of daily means; one participant x all metrics x 2 years hourly;
- the lake: bytes per raw row, files per tier and their sizes; opening each tier's Delta
  table in a fresh process (the first query of a server);
- a full raw scan of the cohort streamed through `/data` (Arrow, one stream) by a server
  under STRATUM_MEMORY_BUDGET=1GiB, with its peak RSS.
(The nightly sync of one new day at cohort scale is `benchmarks.cohort_sync`.)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pyarrow.ipc as ipc

from benchmarks.cohort_build import DAYS, METRICS, USERS, WARM_DAYS, Shape, bar, build
from benchmarks.cohort_report import SCAN_BUDGET, write_report
from benchmarks.dataset import Dataset, bench_home, open_dataset
from benchmarks.measure import elapsed_ms, median_ms
from benchmarks.presets import PRESETS, Preset
from benchmarks.server import ServedData, ServerProcess
from benchmarks.suite import default_out_dir
from engine.access import LOCAL_ADMIN
from engine.query import build_query
from engine.run import Engine
from engine.settings import Settings, load_settings
from lake import Lake
from sync.localdb import stop_local_postgres

REPEATS = 11
FULL = Shape(USERS, DAYS)


# -- measuring -----------------------------------------------------------------------------


def _params(
    users: Sequence[int], metrics: Sequence[str], first: date, last: date, res: str
) -> dict[str, list[str]]:
    return {
        "user_id": [",".join(map(str, users))],
        "metric": [",".join(metrics)],
        "start": [first.isoformat()],
        "end": [(last + timedelta(days=1)).isoformat()],
        "resolution": [res],
        "page_size": ["0"],
    }


def _runner(engine: Engine, params: dict[str, list[str]]) -> Callable[[], int]:
    query = build_query(params, engine.settings.query, principal=LOCAL_ADMIN)

    def run() -> int:
        return sum(batch.num_rows for batch in engine.run(query).batches)

    return run


@dataclass(frozen=True)
class YearQuery:
    """Where one participant's year of heart rate is asked: a dataset and its last lake day."""

    settings: Settings
    url: str
    last: date


def one_year_raw(cohort: YearQuery, medium: YearQuery | None) -> dict[str, dict[str, float]]:
    """One participant x heart rate x the year up to `last`, raw, in the cohort and (when
    built) in `medium`: each engine's latency, timed interleaved (cohort, medium, cohort,
    ...) so that the machine's load falls on both alike (one after the other, the ratio
    moved 1.05x -> 1.24x between runs; interleaved it was 0.98x); and catalog + planning
    alone (Engine.plan: what /plan times)."""
    asked = {"one_year_raw": cohort} | ({"medium_one_year_raw": medium} if medium else {})
    engines = {key: Engine(where.settings, where.url) for key, where in asked.items()}
    try:
        runs, plans = {}, {}
        for key, where in asked.items():
            first = where.last - timedelta(days=364)
            params = _params([1], ["heart_rate"], first, where.last, "raw")
            query = build_query(params, engines[key].settings.query, principal=LOCAL_ADMIN)
            runs[key] = _runner(engines[key], params)
            plans[key] = median_ms(partial(engines[key].plan, query), REPEATS)
        times: dict[str, list[float]] = {key: [] for key in runs}
        for run in runs.values():
            run()  # warm-up
        for _ in range(REPEATS):
            for key, run in runs.items():
                times[key].append(elapsed_ms(run))
        return {
            key: {"latency_ms": statistics.median(times[key]), "catalog_plan_ms": plans[key]}
            for key in runs
        }
    finally:
        for engine in engines.values():
            engine.close()


def span_queries(settings: Settings, url: str, shape: Shape) -> dict[str, float]:
    """Every participant x 2 years of daily means; one participant x all metrics x 2 years
    hourly."""
    engine = Engine(settings, url)
    try:
        first = shape.end - timedelta(days=min(shape.days, 730) - 1)
        everyone = list(range(1, shape.users + 1))
        daily = _params(everyone, ["heart_rate"], first, shape.end, "1d")
        hourly = _params([1], METRICS, first, shape.end, "1h")
        return {
            "daily_all_ms": median_ms(_runner(engine, daily), REPEATS),
            "hourly_one_ms": median_ms(_runner(engine, hourly), REPEATS),
        }
    finally:
        engine.close()


# Opening a tier as a server's first query does: a new process, the table's log replayed.
_OPEN = """
import sys, time
from datetime import datetime, timedelta
from lake import Lake
lake = Lake(sys.argv[1])
end = datetime.fromisoformat(sys.argv[3])
started = time.perf_counter()
lake.files(sys.argv[2], (1,), end - timedelta(days=365), end)
print((time.perf_counter() - started) * 1000)
"""


def lake_figures(lake_path: Path, shape: Shape) -> dict[str, Any]:
    """Bytes per raw row, files per tier and the time to open each tier in a new process."""
    lake = Lake(lake_path)
    end = datetime(shape.end.year, shape.end.month, shape.end.day, tzinfo=UTC)
    tiers: dict[str, Any] = {}
    for tier in ("raw", "agg_1m", "agg_1h", "agg_1d"):
        files = lake.files(tier, None, end - timedelta(days=shape.days + 1), end)
        sizes = sorted(f.size_bytes for f in files.files)
        command = [sys.executable, "-c", _OPEN, str(lake_path), tier, end.isoformat()]
        opened = [
            float(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            for _ in range(3)
        ]
        tiers[tier] = {
            "files": len(sizes),
            "bytes": sum(sizes),
            "rows": files.rows,
            "median_file_bytes": sizes[len(sizes) // 2] if sizes else 0,
            "open_ms": statistics.median(opened),
        }
    raw_rows = tiers["raw"]["rows"]
    total = sum(t["bytes"] for t in tiers.values())
    return {
        "tiers": tiers,
        "raw_rows": raw_rows,
        "raw_bytes_per_row": tiers["raw"]["bytes"] / raw_rows if raw_rows else None,
        "lake_bytes_per_raw_row": total / raw_rows if raw_rows else None,
    }


@dataclass(frozen=True)
class _Served:
    home: Path
    url: str
    lake_path: Path


def full_scan(dataset: ServedData, shape: Shape, out: Path) -> dict[str, Any]:
    """Every raw row of the cohort through one /data Arrow stream from a server whose
    memory budget is SCAN_BUDGET, and that server's peak RSS."""
    server = ServerProcess(
        [sys.executable, "-m", "api.cli", "serve"],
        dataset,
        out / "scan-server.log",
        STRATUM_MEMORY_BUDGET=SCAN_BUDGET,
        STRATUM_MAX_USERS=str(max(1000, shape.users)),
    )
    try:
        params = _params(range(1, shape.users + 1), METRICS, shape.first_day, shape.end, "raw")
        request = urllib.request.Request(
            f"{server.base_url}/data?{urlencode({k: v[0] for k, v in params.items()})}"
            "&format=arrow",
            headers={"Authorization": f"Bearer {server.key}"},
        )
        rows = 0
        started = time.perf_counter()
        with server.sampler.window() as peak, urllib.request.urlopen(request) as response:
            for batch in ipc.open_stream(response):
                rows += batch.num_rows
        seconds = time.perf_counter() - started
        return {
            "rows": rows,
            "seconds": seconds,
            "rows_per_s": rows / seconds if seconds else 0.0,
            "peak_rss_bytes": peak[0],
            "budget": SCAN_BUDGET,
        }
    finally:
        server.stop()


def medium_dataset(settings: Settings, build_it: bool) -> Dataset | None:
    """The `medium` bench dataset, for the same one-participant query side by side: reused
    when built, built only when asked."""
    preset: Preset = PRESETS["medium"]
    home = bench_home(settings, "medium")
    if not build_it and not (home / "dataset.json").exists():
        return None
    with bar() as progress:
        return open_dataset(preset, home, progress)


# -- running -------------------------------------------------------------------------------


def run_cohort(
    settings: Settings,
    *,
    shape: Shape = FULL,
    home: Path | None = None,
    out_dir: Path | None = None,
    rebuild: bool = False,
    with_medium: bool = False,
    scan: bool = True,
) -> Path:
    """Build (or continue) the cohort, measure it, write the report; return its path."""
    home = home or bench_home(settings, "cohort")
    out = out_dir or default_out_dir("cohort")
    out.mkdir(parents=True, exist_ok=True)
    try:
        url, lake_path, record = build(home, shape, rebuild)
        dataset_settings = {
            "STRATUM_HOME": str(home),
            "STRATUM_DATABASE_URL": url,
            "STRATUM_LAKE_PATH": str(lake_path),
            "STRATUM_MAX_USERS": str(max(1000, shape.users)),
        }
        cohort_settings = load_settings(dataset_settings)
        last_lake_day = shape.end - timedelta(days=WARM_DAYS)
        results: dict[str, Any] = {
            "shape": {"users": shape.users, "days": shape.days, "end": shape.end.isoformat()},
            "build": record,
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        medium = medium_dataset(settings, with_medium)
        try:
            results |= one_year_raw(
                YearQuery(cohort_settings, url, last_lake_day),
                None
                if medium is None
                else YearQuery(
                    medium.settings(), medium.url, (medium.lake_end - timedelta(days=1)).date()
                ),
            )
        finally:
            if medium is not None:
                stop_local_postgres(medium.home)
        results["spans"] = span_queries(cohort_settings, url, shape)
        results["lake"] = lake_figures(lake_path, shape)
        if scan:
            results["scan"] = full_scan(_Served(home, url, lake_path), shape, out)
        return write_report(results, out)
    finally:
        stop_local_postgres(home)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cohort", description=__doc__)
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--days", type=int, default=DAYS)
    parser.add_argument(
        "--home", type=Path, default=None, help="default: $STRATUM_HOME/bench-cohort"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--medium", action="store_true", help="build `medium` if missing")
    parser.add_argument("--no-scan", action="store_true", help="skip the full raw scan")
    args = parser.parse_args(argv)
    report = run_cohort(
        load_settings(),
        shape=Shape(args.users, args.days),
        home=args.home,
        out_dir=args.out,
        rebuild=args.rebuild,
        with_medium=args.medium,
        scan=not args.no_scan,
    )
    print(f"report: {report}")


if __name__ == "__main__":
    main()
