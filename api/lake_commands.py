"""The lake jobs from the CLI: `stratum sync`, `sync status`, `backfill`, `tier`, `db compress`,
`maintain`, `verify`, `repair`, `prefill`, `scheduler`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date
from pathlib import Path

from rich import box
from rich.progress import Progress, TaskID
from rich.table import Table
from rich.text import Text

from api.argtypes import non_negative, positive
from api.console import Context, console, progress
from engine.calendarprefill import PrefillResult, mark_all_pending, prefill_calendar
from engine.errors import SyncFailed
from engine.run import Engine
from engine.tiers import TIERS
from lake import Lake
from sync import jobs
from sync.backfill import BATCH_ROWS, BackfillFailed, BackfillResult
from sync.columnstore import ColumnstoreResult
from sync.coverage import lake_summary, user_coverage
from sync.export import SyncResult, VerificationFailed
from sync.fitbit import time_zone
from sync.lakefiles import damage_report
from sync.maintenance import MaintainResult
from sync.relayout import relayout_lake
from sync.runs import recent_runs
from sync.scheduler import run_scheduler
from sync.tiering import TieringResult
from sync.verify import RepairResult, VerifyResult


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sync = sub.add_parser(
        "sync", help="export completed, changed days to the lake (refreshes rollups first)"
    )
    sync.add_argument(
        "--no-refresh",
        action="store_true",
        help="do not refresh rollups first: days with stale rollups wait for the next run",
    )
    sync.set_defaults(run=sync_command)
    actions = sync.add_subparsers(dest="sync_action", metavar="[status]", title="actions")
    status = actions.add_parser("status", help="last runs, lake versions, per-user coverage")
    status.add_argument("--runs", type=positive, default=10, help="runs to show")
    status.set_defaults(run=sync_status)

    backfill = sub.add_parser(
        "backfill",
        help="load archives older than the warm horizon straight into the lake",
        description="Load CSV, Parquet, NDJSON or Fitbit Web API intraday files (heart rate, "
        "steps) of days older than the warm horizon into the lake, every tier, verified. "
        "Each file is checked whole first: a bad row, a day inside the horizon or a day "
        "the warm store holds refuses it with nothing written. A day already in the lake "
        "is replaced for the metrics the file holds on it.",
    )
    backfill.add_argument("files", nargs="+", type=Path, metavar="FILE")
    backfill.add_argument(
        "--ts-unit",
        choices=("s", "ms", "us"),
        default=None,
        help="ts holds integer epochs in seconds, milliseconds or microseconds",
    )
    backfill.add_argument(
        "--user",
        type=non_negative,
        default=None,
        metavar="ID",
        help="participant of Fitbit Web API files (they do not name one)",
    )
    backfill.add_argument(
        "--tz",
        default=None,
        metavar="ZONE",
        help="IANA time zone of the device of Fitbit Web API files, e.g. Europe/Berlin "
        "(their times are local)",
    )
    backfill.add_argument(
        "--older-than",
        type=positive,
        default=None,
        metavar="DAYS",
        help="the warm horizon: only days older than this (default $STRATUM_TIER_OLDER_THAN_DAYS)",
    )
    backfill.add_argument(
        "--batch-rows",
        type=positive,
        default=BATCH_ROWS,
        metavar="ROWS",
        help="raw rows per Delta commit (whole participant-days)",
    )
    backfill.set_defaults(run=backfill_command)

    tier = sub.add_parser(
        "tier", help="remove raw and 1m rows verified in the lake from the warm store"
    )
    tier.add_argument(
        "--older-than",
        type=positive,
        default=None,
        metavar="DAYS",
        help="only days older than this (default $STRATUM_TIER_OLDER_THAN_DAYS)",
    )
    tier.set_defaults(run=tier_command)

    maintain = sub.add_parser("maintain", help="compact the lake, vacuum unreferenced files")
    maintain.add_argument(
        "--retention-hours",
        type=non_negative,
        default=None,
        help="keep unreferenced files younger than this (default $STRATUM_VACUUM_RETENTION_HOURS)",
    )
    maintain.add_argument(
        "--relayout",
        action="store_true",
        help="once, with the API and scheduler stopped: rewrite raw and 1m tables of the "
        "pre-issue-12 layout (one file per participant-day) into month partitions",
    )
    maintain.set_defaults(run=maintain_command)

    verify = sub.add_parser(
        "verify",
        help="scrub the lake: every file against its recorded size, a rolling slice (each file "
        "within STRATUM_SCRUB_NIGHTS runs) against its recorded hash",
    )
    verify.set_defaults(run=verify_command)
    repair = sub.add_parser(
        "repair",
        help="re-export damaged lake days the warm store holds; list what needs a backup",
    )
    repair.set_defaults(run=repair_command)

    prefill = sub.add_parser(
        "prefill",
        help="compute the calendar cache's local days for the days changed since the last "
        "prefill (the nightly job's step; $STRATUM_CALENDAR_PREFILL)",
    )
    prefill.add_argument(
        "--all",
        action="store_true",
        help="every day, not only the changed ones (after adding a zone to the setting)",
    )
    prefill.set_defaults(run=prefill_command)

    scheduler = sub.add_parser(
        "scheduler", help="run the nightly sync and the hourly rollup refresh (UTC)"
    )
    scheduler.add_argument("--once", action="store_true", help="run the nightly job now, exit")
    scheduler.set_defaults(run=scheduler_command)


def _progress_callback(description: str) -> tuple[Progress, Callable[[int, int, int], None]]:
    bar = progress()
    task = bar.add_task(description, total=None, rows=0)

    def update(done: int, total: int, rows: int) -> None:
        bar.update(task, completed=done, total=total, rows=rows)

    return bar, update


def sync_command(args: argparse.Namespace, ctx: Context) -> int:
    if not args.no_refresh:
        workers = ctx.settings.database.refresh_workers
        refreshed = jobs.require_ok(jobs.refresh_job(ctx.url, workers))
        console.print(f"rollups: refreshed {refreshed.days} user-days")
    url = ctx.url  # checked before a progress bar shows
    bar, update = _progress_callback("sync")
    try:
        with bar:
            result = jobs.sync_job(url, ctx.settings.lake, progress=update)
    except VerificationFailed as exc:
        print_sync(exc.result)
        raise
    assert isinstance(result.detail, SyncResult)
    print_sync(result.detail)
    return 0


def print_sync(result: SyncResult) -> None:
    per_table = ", ".join(f"{table} {rows:,}" for table, rows in result.rows.items())
    versions = ", ".join(f"{table} v{v}" for table, v in result.versions.items()) or "none"
    console.print(
        f"synced {result.days} user-days: {result.total_rows:,} rows ({per_table}) in "
        f"{result.seconds:.1f}s = {result.rows_per_s:,.0f} rows/s; "
        f"{result.bytes / 2**20:,.1f} MiB in {result.files} files; lake {versions}"
    )
    if result.skipped_stale:
        console.print(f"{result.skipped_stale} changed days wait for a rollup refresh")
    if result.failed:
        console.print(f"{len(result.failed)} (user, day, tier) failed verification", style="red")


def db_compress(args: argparse.Namespace, ctx: Context) -> int:
    result = jobs.columnstore_job(ctx.url, ctx.settings.lake, after_days=args.older_than)
    done = result.detail
    if not isinstance(done, ColumnstoreResult):
        console.print("columnstore off (STRATUM_COLUMNSTORE_AFTER_DAYS=0): nothing compressed")
    elif not done.bytes_before:
        console.print("TimescaleDB: not available, plain PostgreSQL tables: nothing to compress")
    else:
        console.print(
            f"compressed {done.chunks} chunks in {done.seconds:.1f}s: raw_data and data_1m_stored "
            f"{_size(done.bytes_before)} -> {_size(done.bytes_after)}"
        )
    return 0


def backfill_command(args: argparse.Namespace, ctx: Context) -> int:
    zone = None if args.tz is None else time_zone(args.tz)
    url = ctx.url  # checked before a progress bar shows
    bar = progress()
    tasks: dict[Path, TaskID] = {}

    def update(path: Path, done: int, total: int, rows: int) -> None:
        if path not in tasks:
            tasks[path] = bar.add_task(f"backfill {path.name}", total=total, rows=rows)
        bar.update(tasks[path], completed=done, total=total, rows=rows)

    try:
        with bar:
            result = jobs.backfill_job(
                url,
                ctx.settings.lake,
                args.files,
                older_than_days=args.older_than,
                batch_rows=args.batch_rows,
                user_id=args.user,
                zone=zone,
                ts_unit=args.ts_unit,
                progress=update,
            )
    except BackfillFailed as exc:
        print_backfill(exc.result)
        raise
    assert isinstance(result.detail, BackfillResult)
    print_backfill(result.detail)
    return 0


def print_backfill(result: BackfillResult) -> None:
    per_table = ", ".join(f"{table} {rows:,}" for table, rows in result.lake_rows.items())
    console.print(
        f"backfilled {result.files} files: {result.rows:,} raw rows, {result.days} user-days "
        f"({result.replaced} replaced) in {result.batches} commits per tier, "
        f"{result.seconds:.1f}s = {result.rows_per_s:,.0f} raw rows/s; lake rows written: "
        f"{per_table}; {result.bytes / 2**20:,.1f} MiB in {result.lake_files} files"
    )
    if result.failed:
        console.print(f"{len(result.failed)} (user, day, tier) failed verification", style="red")


def tier_command(args: argparse.Namespace, ctx: Context) -> int:
    url = ctx.url  # checked before a progress bar shows
    bar, update = _progress_callback("tier")
    with bar:
        result = jobs.tiering_job(
            url, ctx.settings.lake, older_than_days=args.older_than, progress=update
        )
    tiered = result.detail
    assert isinstance(tiered, TieringResult)
    rows = ", ".join(f"{table} {count:,}" for table, count in tiered.rows.items())
    console.print(
        f"tiered {tiered.days} user-days: removed {rows} rows"
        + (f", dropped {tiered.chunks} chunks" if tiered.chunks else "")
        + f" in {tiered.seconds:.1f}s"
    )
    jobs.require_ok(result)
    return 0


def maintain_command(args: argparse.Namespace, ctx: Context) -> int:
    settings = ctx.settings.lake
    if args.relayout:
        for rewritten in relayout_lake(ctx.url, Lake(settings.path)):
            console.print(
                f"{rewritten.tier}: {rewritten.files_before} files -> {rewritten.files_after} "
                f"({rewritten.rows:,} rows, verified; v{rewritten.version})"
            )
    if args.retention_hours is not None:
        settings = replace(settings, vacuum_retention_hours=args.retention_hours)
    result = jobs.maintain_job(ctx.url, settings)
    done = result.detail
    assert isinstance(done, MaintainResult)
    for table, compacted in done.compacted.items():
        if compacted.partitions:
            console.print(
                f"{table}: compacted {compacted.partitions} partitions, "
                f"{compacted.files_removed} files -> {compacted.files_added} "
                f"(v{compacted.version})"
            )
    console.print(
        f"compacted {done.files_rewritten} files; vacuum deleted {done.files_deleted} files "
        f"older than {settings.vacuum_retention_hours}h; {done.seconds:.1f}s"
    )
    jobs.require_ok(result)  # damaged partitions were skipped and named: exit non-zero
    return 0


def verify_command(args: argparse.Namespace, ctx: Context) -> int:
    result = jobs.verify_job(ctx.url, ctx.settings.lake)
    done = result.detail
    assert isinstance(done, VerifyResult)
    console.print(
        f"checked {done.files:,} lake files, hashed {done.hashed:,} ({_size(done.bytes)}) in "
        f"{done.seconds:.1f}s; "
        f"{len(done.damaged)} damaged lake days found"
    )
    _print_damage(done.damaged)
    if done.damaged:
        console.print("run `stratum repair`", style="red")
    jobs.require_ok(result)
    return 0


def repair_command(args: argparse.Namespace, ctx: Context) -> int:
    result = jobs.repair_job(ctx.url, ctx.settings.lake)
    done = result.detail
    assert isinstance(done, RepairResult)
    console.print(f"re-exported {len(done.requeued)} damaged lake days from the warm store")
    if done.sync is not None:
        print_sync(done.sync)
    if done.backup_only:
        console.print(
            f"{len(done.backup_only)} lake days are held nowhere else: restore them from a "
            "backup of the lake (then run `stratum verify`)",
            style="red",
        )
        _print_damage(done.backup_only)
    jobs.require_ok(result)
    return 0


def _print_damage(rows: list[tuple[int, str, date, str]]) -> None:
    if not rows:
        return
    table = Table(title="damaged lake days", box=box.SIMPLE_HEAD)
    for name in ("user", "tier", "day", "why"):
        table.add_column(name)
    for user_id, tier, day, why in rows:
        table.add_row(str(user_id), tier, day.isoformat(), why)
    console.print(table)


@contextmanager
def _calendar_prefill(ctx: Context) -> Iterator[Callable[[], PrefillResult] | None]:
    """The nightly prefill over an engine of its own (None: the setting or the cache is off)."""
    zones = ctx.settings.query.calendar_prefill
    if not zones or not ctx.settings.query.calendar_cache_rows:
        yield None
        return
    url = ctx.url
    engine = Engine(ctx.settings, url)
    try:
        yield lambda: prefill_calendar(engine, url, zones)
    finally:
        engine.close()


def prefill_command(args: argparse.Namespace, ctx: Context) -> int:
    with _calendar_prefill(ctx) as prefill:
        if prefill is None:
            console.print(
                "no prefill: STRATUM_CALENDAR_PREFILL is none or STRATUM_CALENDAR_CACHE_ROWS is 0"
            )
            return 0
        if args.all:
            console.print(f"{mark_all_pending(ctx.url)} days marked for the prefill")
        result = jobs.prefill_cache_job(ctx.url, prefill)
    done = result.detail
    assert isinstance(done, PrefillResult)
    console.print(
        f"prefilled {done.days} participant-days in {done.requests} requests: "
        f"{done.computed} entries computed, {done.hits} already cached; {done.seconds:.1f}s"
    )
    return 0


def scheduler_command(args: argparse.Namespace, ctx: Context) -> int:
    for name in ("sync", "apscheduler", "engine.calendarprefill"):
        logging.getLogger(name).setLevel(logging.INFO)
    if args.once:
        with _calendar_prefill(ctx) as prefill:
            result = jobs.nightly_job(
                ctx.url,
                ctx.settings.lake,
                calendar_cache_rows=ctx.settings.query.calendar_cache_rows,
                prefill=prefill,
                refresh_workers=ctx.settings.database.refresh_workers,
            )
        console.print(
            f"nightly job: {result.status}" + (f" ({result.error})" if result.error else "")
        )
        if result.status == "failed":
            raise SyncFailed(f"nightly job failed: {result.error}")
        return 0
    console.print(
        f"scheduler: nightly at '{ctx.settings.scheduler.nightly_cron}' UTC, rollups hourly; "
        "Ctrl-C stops"
    )
    with _calendar_prefill(ctx) as prefill:
        run_scheduler(ctx.url, ctx.settings, prefill)
    return 0


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


def sync_status(args: argparse.Namespace, ctx: Context) -> int:
    runs = Table(title="last runs", box=box.SIMPLE_HEAD)
    for name in ("job", "status", "started"):
        runs.add_column(name)
    for name in ("took", "days", "rows", "bytes", "lake v"):
        runs.add_column(name, justify="right")
    runs.caption = f"times in UTC; lake v: versions of {'/'.join(TIERS)} after the run"
    errors = []
    for run in recent_runs(ctx.url, args.runs):
        seconds = run.seconds
        versions = "/".join(str(run.lake_versions.get(t.lake_table, "-")) for t in TIERS.values())
        style = {"failed": "red", "interrupted": "yellow", "running": "cyan"}.get(run.status, "")
        runs.add_row(
            run.job,
            Text(run.status, style=style),
            run.started_at.astimezone(UTC).strftime("%m-%d %H:%M"),
            "" if seconds is None else f"{seconds:.1f}s",
            f"{run.days:,}",
            f"{run.rows:,}",
            _size(run.bytes) if run.bytes else "",
            versions if run.lake_versions else "",
        )
        if run.error:
            errors.append(f"{run.job} {run.started_at.astimezone(UTC):%m-%d %H:%M}: {run.error}")
    console.print(runs)
    for error in errors:
        console.print(Text.assemble(("error", "red"), " ", error), highlight=False)

    tables = Table(title=f"lake {ctx.settings.lake.path}", box=box.SIMPLE_HEAD)
    for name in ("tier", "version", "files", "rows", "bytes"):
        tables.add_column(name, justify="left" if name == "tier" else "right")
    for table in lake_summary(Lake(ctx.settings.lake.path)):
        tables.add_row(
            table.table,
            "-" if table.version is None else str(table.version),
            f"{table.files:,}",
            f"{table.rows:,}",
            _size(table.bytes),
        )
    console.print(tables)

    users = Table(title="coverage per user (raw tier)", box=box.SIMPLE_HEAD)
    for name in (
        "user",
        "first lake day",
        "last lake day",
        "days in lake",
        "days pending",
        "days tiered",
    ):
        users.add_column(name, justify="right")
    for cov in user_coverage(ctx.url):
        users.add_row(
            str(cov.user_id),
            str(cov.first_lake_day or "-"),
            str(cov.last_lake_day or "-"),
            f"{cov.days_in_lake:,}",
            f"{cov.days_pending:,}",
            f"{cov.days_tiered:,}",
        )
    console.print(users)
    damaged = damage_report(ctx.url, Lake(ctx.settings.lake.path))
    _print_damage(damaged)
    if damaged:
        raise SyncFailed(
            f"{len(damaged)} lake days are damaged or lost and not served from the lake; "
            "run `stratum verify`, then `stratum repair`"
        )
    return 0


def demo_sync(ctx: Context) -> None:
    """The demo's lake step: sync what is complete, then show the lake per tier."""
    result = jobs.sync_job(ctx.url, ctx.settings.lake)
    assert isinstance(result.detail, SyncResult)
    print_sync(result.detail)
    tables = Table(title="lake")
    for name in ("tier", "rows", "files", "bytes"):
        tables.add_column(name, justify="left" if name == "tier" else "right")
    for table in lake_summary(Lake(ctx.settings.lake.path)):
        tables.add_row(table.table, f"{table.rows:,}", f"{table.files:,}", _size(table.bytes))
    console.print(tables)
