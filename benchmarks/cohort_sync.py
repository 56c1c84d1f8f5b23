"""The nightly job at cohort scale (issue 12, point 3): not a test, never asserted.

    python -m benchmarks.cohort_sync [HOME] [--users N] [--days H] [--skip-scan]

Builds (in HOME, default .stratum-bench-sync, rebuilt on every run) N participants at one
sample a minute (heart rate, steps, SpO2 at night) with H days of history in the lake, loaded
through `stratum backfill` (sync/backfill.py); the warm store keeps the last days
(STRATUM_TIER_OLDER_THAN_DAYS=2). Then, twice, with H and with 2H days of history:
- one new day of every participant is ingested into the warm store;
- the nightly job runs (sync/jobs.py's nightly_job, what the scheduler runs): refresh, sync
  (the new day), tier (the day that crossed the horizon), compress, maintain, verify.
Prints each step's seconds, the split of its time into parts (from a profile of the job:
statement time in the catalog, Delta snapshot loads, file writes, hashing, read-back
verification, ...), tiering's rows per second, and at the end the peak RSS of a full raw
scan of the cohort's streams in a child process under STRATUM_MEMORY_BUDGET=1GiB.
The private PostgreSQL it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any, cast

import psycopg
from deltalake import DeltaTable

from engine.access import LOCAL_ADMIN
from engine.query import build_query
from engine.run import Engine
from engine.settings import Settings, load_settings
from lake import Lake
from sync.cohort_files import write_cohort
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.jobs import backfill_job, nightly_job
from sync.localdb import database_url, stop_local_postgres
from sync.runs import JobResult
from sync.schema import init_schema

METRICS = ("heart_rate", "steps", "spo2")
EVERY_S = 60
DATABASE = "stratum_sync_bench"
TIER_OLDER_THAN_DAYS = 2
FIRST_NIGHT = date(2025, 6, 1)  # "today" of the warm-up night
USERS_PER_ARCHIVE = 25
SCAN = "--scan-child"  # the child process of the raw scan
# Where the time goes: (label, module path suffix, function). Cumulative times; parts nest
# (a snapshot load happens inside a write), so they do not add up to the step. The profile
# sees the calling thread only: compaction's partitions run in worker threads.
PARTS = (
    ("sync: waiting for the warm-store read", "sync/prefetch.py", "prefetched"),
    ("sync: Delta snapshot loads", "lake/store.py", "_build"),
    ("sync: Delta table opens (delta-rs)", "lake/store.py", "_table"),
    ("sync: writing (replace_days)", "lake/store.py", "replace_days"),
    ("sync: hashing new files", "sync/export.py", "_file_records"),
    ("sync: read-back verification", "lake/store.py", "day_stats"),
    ("sync: catalog statements", "sync/export.py", "_record"),
    ("sync: coarse partitions' records", "sync/export.py", "_recorded_in"),
    ("tier: lake copies checked", "sync/tiering.py", "_lake_copy"),
    ("tier: file hashes", "sync/lakefiles.py", "vouched_days"),
    ("tier: chunk drops", "sync/tiering.py", "_drop_chunks"),
    ("tier: row deletes", "sync/tiering.py", "_delete_rows"),
    ("tier: warm-store row counts", "sync/tiering.py", "_warm_counts"),
    ("maintain: compaction", "lake/store.py", "compact"),
    ("maintain: compared with the records", "sync/lakefiles.py", "record_checked_files"),
    ("maintain: vacuum", "lake/store.py", "vacuum"),
    ("maintain: prune file records", "sync/lakefiles.py", "prune_file_records"),
    ("verify: file checks", "lake/integrity.py", "check_file"),
)


def _settings(home: Path) -> Settings:
    return load_settings(
        {
            "STRATUM_HOME": str(home),
            "STRATUM_LAKE_PATH": str(home / "lake"),
            "STRATUM_TIER_OLDER_THAN_DAYS": str(TIER_OLDER_THAN_DAYS),
        }
    )


def _create_database(home: Path) -> str:
    server_url = database_url(None, home)
    url = server_url.rsplit("/", 1)[0] + f"/{DATABASE}"
    admin = server_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    init_schema(url)
    return url


def _backfill(
    url: str, settings: Settings, home: Path, users: int, first: date, days: int, today: date
) -> dict[str, float]:
    """Load `days` days from `first` of every participant into the lake through backfill."""
    folder = home / "archives"
    folder.mkdir(exist_ok=True)
    paths = []
    started = time.perf_counter()
    for first_user in range(1, users + 1, USERS_PER_ARCHIVE):
        count = min(USERS_PER_ARCHIVE, users - first_user + 1)
        path = folder / f"{first}-{first_user}.parquet"
        tables = generate_cohort(
            count, days, first, metrics=METRICS, every_s=EVERY_S, first_user_id=first_user
        )
        write_cohort(path, tables)
        paths.append(path)
    generated = time.perf_counter() - started
    result = backfill_job(url, settings.lake, paths, today=today)
    shutil.rmtree(folder)
    return {"generate s": generated, "backfill s": result.seconds, "raw rows": result.rows}


def _profile_parts(profile: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(profile)
    found = dict.fromkeys((label for label, _, _ in PARTS), 0.0)
    for (path, _, name), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        for label, suffix, function in PARTS:
            if name == function and path.endswith(suffix):
                found[label] += cumulative
    return found


def _night(
    url: str, settings: Settings, users: int, new_day: date, today: date, lake: Lake | None
) -> dict[str, Any]:
    """Ingest `new_day` of every participant, then run the nightly job as of `today` with
    the scheduler's long-lived `lake` (None: each step opens the lake afresh, as every step
    did before the scheduler kept one)."""
    tables = generate_cohort(users, 1, new_day, metrics=METRICS, every_s=EVERY_S)
    ingested = ingest_tables(url, tables, settings.lake.path)
    loads = (lake.snapshot_loads, lake.table_opens) if lake else (0, 0)
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    result = nightly_job(url, settings.lake, today=today, lake=lake)
    profile.disable()
    wall = time.perf_counter() - started
    detail = cast(dict[str, JobResult], result.detail)
    steps = {name: step.seconds for name, step in detail.items()}
    tier = detail["tier"]
    return {
        "status": result.status,
        "error": result.error,
        "ingested rows": ingested.rows,
        "ingest s": ingested.seconds,
        "nightly s (profiled)": wall,
        "steps s": steps,
        "synced days": result.days,
        "synced rows": result.rows,
        "tiered days": tier.days,
        "tiered rows": tier.rows,
        "tier rows/s": tier.rows / tier.seconds if tier.seconds else 0.0,
        "parts s": _profile_parts(profile),
        "whole-table loads (snapshots, delta-rs opens)": (
            (lake.snapshot_loads - loads[0], lake.table_opens - loads[1]) if lake else "per step"
        ),
    }


def _table_loads(home: Path) -> dict[str, float]:
    """Milliseconds a fresh Lake takes to load each table's file list (what every step of
    every night paid before the scheduler kept its Lake), and a delta-rs open alone."""
    lake = Lake(home / "lake")
    figures = {}
    for tier in ("raw", "agg_1m", "agg_1h", "agg_1d"):
        started = time.perf_counter()
        lake.version(tier)
        figures[f"{tier} snapshot ms"] = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        DeltaTable(str(home / "lake" / tier))
        figures[f"{tier} delta-rs open ms"] = (time.perf_counter() - started) * 1000
    return figures


def _lake_files(home: Path) -> dict[str, int]:
    return {
        tier.name: sum(1 for _ in tier.rglob("*.parquet"))
        for tier in sorted((home / "lake").iterdir())
        if tier.is_dir()
    }


def _scan(home: Path, url: str, users: int, first: date, end: date) -> dict[str, Any]:
    """A full raw scan of every participant's streams in a child process under a 1 GiB
    budget: its rows, seconds and peak RSS."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.cohort_sync", SCAN, str(home), url, str(users)]
        + [first.isoformat(), end.isoformat()],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        return {"error": done.stderr[-2000:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _scan_child(home: str, url: str, users: str, first: str, end: str) -> None:
    settings = load_settings(
        {
            "STRATUM_HOME": home,
            "STRATUM_LAKE_PATH": str(Path(home) / "lake"),
            "STRATUM_MEMORY_BUDGET": "1GiB",
            "STRATUM_MAX_USERS": "100000",
        }
    )
    engine = Engine(settings, url)
    try:
        query = build_query(
            {
                "user_id": [",".join(map(str, range(1, int(users) + 1)))],
                "metric": [",".join(METRICS)],
                "start": [first],
                "end": [end],
                "resolution": ["raw"],
                "page_size": ["0"],
            },
            settings.query,
            principal=LOCAL_ADMIN,
        )
        started = time.perf_counter()
        answer = engine.run(query)
        rows = sum(batch.num_rows for batch in answer.batches)
        seconds = time.perf_counter() - started
    finally:
        engine.close()
    # VmHWM, not getrusage's ru_maxrss: Linux carries the forking parent's peak across exec.
    status = Path("/proc/self/status").read_text()
    peak_kib = next(
        int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")
    )
    print(json.dumps({"rows": rows, "seconds": seconds, "peak RSS MiB": peak_kib / 1024}))


def main(argv: list[str]) -> None:
    if len(argv) > 1 and argv[1] == SCAN:
        _scan_child(*argv[2:7])
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cohort_sync")
    parser.add_argument("home", nargs="?", default=".stratum-bench-sync")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--skip-scan", action="store_true")
    args = parser.parse_args(argv[1:])
    home = Path(args.home).resolve()
    shutil.rmtree(home / "lake", ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    users, days = args.users, args.days
    settings = _settings(home)
    night = FIRST_NIGHT
    try:
        url = _create_database(home)
        # History ends before the warm horizon of the first night (backfill's rule).
        newest_history = night - timedelta(days=TIER_OLDER_THAN_DAYS + 1)
        first = newest_history - timedelta(days=days - 1)
        built = _backfill(url, settings, home, users, first, days, night)
        print(f"history of {days} days: {built}")
        lake = Lake(settings.lake.path)  # the scheduler's, kept for its whole life
        # Warm-up night: the day before the first timed one goes warm, is synced, not tiered.
        warm_up = _night(url, settings, users, night - timedelta(days=2), night, lake)
        print(f"warm-up night: {warm_up['status']} {warm_up['steps s']}")
        for round_ in (1, 2):
            held = (night - timedelta(days=TIER_OLDER_THAN_DAYS) - first).days + 1
            print(f"\n== {users} participants, {held} days of history in the lake ==")
            print(f"lake files per tier: {_lake_files(home)}")
            print(f"a fresh Lake's table loads: {_table_loads(home)}")
            for label, kept in (("each step opens the lake", None), ("scheduler's Lake", lake)):
                night += timedelta(days=1)
                figures = _night(url, settings, users, night - timedelta(days=2), night, kept)
                print(f"-- night of {night}, {label}:")
                print(json.dumps(figures, indent=2, default=str))
            if round_ == 1:  # twice the history: H older days
                older = first - timedelta(days=days)
                built = _backfill(url, settings, home, users, older, days, night)
                print(f"\nhistory of {days} more days: {built}")
                first = older
        if not args.skip_scan:
            scan = _scan(home, url, users, first, night)
            print(f"\nfull raw scan under STRATUM_MEMORY_BUDGET=1GiB: {scan}")
    finally:
        stop_local_postgres(home)


if __name__ == "__main__":
    main(sys.argv)
