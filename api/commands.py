"""Implementations of the `stratum` subcommands (argument parsing lives in api/cli.py)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import psycopg
import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.settings import Settings
from sync import localdb
from sync.generate import generate_cohort, write_cohort
from sync.ingest import ingest_files, ingest_tables
from sync.rollups import pending_refresh_days, refresh_rollups
from sync.schema import init_schema

console = Console()


@dataclass
class Context:
    """What every command needs: the settings, and the database URL once resolved."""

    settings: Settings
    _url: str | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        if self._url is None:
            db = self.settings.database
            self._url = localdb.database_url(db.url, db.home)
        return self._url


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rows]:>12,} rows"),
        TimeElapsedColumn(),
        console=console,
    )


def db_init(args: argparse.Namespace, ctx: Context) -> int:
    result = init_schema(ctx.url, ctx.settings.database.chunk_interval)
    applied = ", ".join(result.applied) or "none (already up to date)"
    console.print(f"migrations applied: {applied}")
    if result.timescaledb:
        console.print(f"TimescaleDB: hypertables {', '.join(result.hypertables)}")
    else:
        console.print("TimescaleDB: not available, plain PostgreSQL tables")
    return 0


def db_url(args: argparse.Namespace, ctx: Context) -> int:
    print(ctx.url)
    return 0


def db_stop(args: argparse.Namespace, ctx: Context) -> int:
    stopped = localdb.stop_local_postgres(ctx.settings.database.home)
    console.print("stopped" if stopped else "no private PostgreSQL running")
    return 0


def ingest(args: argparse.Namespace, ctx: Context) -> int:
    total_rows = 0
    with progress() as bar:
        task = bar.add_task("ingest", total=len(args.files), rows=0)
        for path in args.files:
            result = ingest_files(ctx.url, [path])
            total_rows += result.rows
            bar.update(task, advance=1, rows=total_rows)
            console.print(
                f"{path}: {result.rows:,} rows, {result.days_marked} days marked, "
                f"{result.rows_per_s:,.0f} rows/s"
            )
    return 0


def aggregate(args: argparse.Namespace, ctx: Context) -> int:
    result = refresh_rollups(ctx.url)
    rows = ", ".join(f"{table} {count:,}" for table, count in result.rows.items())
    console.print(f"refreshed {result.days} user-days in {result.seconds:.1f}s ({rows})")
    return 0


def default_start(days: int) -> date:
    """First day of a `days`-long span that ends yesterday (UTC)."""
    return datetime.now(UTC).date() - timedelta(days=days)


def _counted(tables: Iterable[pa.Table], bar: Progress, task: object) -> Iterator[pa.Table]:
    rows = 0
    for table in tables:
        rows += table.num_rows
        bar.update(task, advance=1, rows=rows)  # type: ignore[arg-type]
        yield table


def generate(args: argparse.Namespace, ctx: Context) -> int:
    start = args.start or default_start(args.days)
    tables = generate_cohort(
        args.users, args.days, start, seed=args.seed, metrics=args.metrics,
        every_s=args.every, first_user_id=args.first_user,
    )  # fmt: skip
    with progress() as bar:
        task = bar.add_task("generate", total=args.users * args.days, rows=0)
        counted = _counted(tables, bar, task)
        if args.out is not None:
            rows = write_cohort(args.out, counted)
            console.print(f"wrote {rows:,} rows to {args.out}")
            return 0
        init_schema(ctx.url, ctx.settings.database.chunk_interval)
        result = ingest_tables(ctx.url, counted)
    console.print(
        f"ingested {result.rows:,} rows for {args.users} users x {args.days} days from {start} "
        f"({result.rows_per_s:,.0f} rows/s end to end)"
    )
    return 0


def tier_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        counts = {}
        for table in ("raw_data", "data_1m", "data_1h", "data_1d"):
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
            counts[table] = int(row[0]) if row else 0
        counts["pending refresh (user-days)"] = pending_refresh_days(conn)
        return counts


def status(args: argparse.Namespace, ctx: Context) -> int:
    table = Table(title="warm store")
    table.add_column("tier")
    table.add_column("rows", justify="right")
    for name, count in tier_counts(ctx.url).items():
        table.add_row(name, f"{count:,}")
    console.print(table)
    return 0


def demo(args: argparse.Namespace, ctx: Context) -> int:
    console.rule("stratum demo")
    init = init_schema(ctx.url, ctx.settings.database.chunk_interval)
    console.print(f"warm store: {ctx.url} (TimescaleDB: {'yes' if init.timescaledb else 'no'})")
    gen_args = argparse.Namespace(
        users=args.users, days=args.days, start=None, seed=0, metrics=None, every=None,
        first_user=1, out=None,
    )  # fmt: skip
    generate(gen_args, ctx)
    aggregate(args, ctx)
    status(args, ctx)
    return 0


# -- `stratum bench` -------------------------------------------------------------------------

BENCH_SCALES = ("ci", "small", "medium", "large")  # benchmarks.presets.PRESETS (a test checks)


def bench(args: argparse.Namespace, ctx: Context) -> int:
    # benchmarks imports every package, the HTTP app included: load it only when asked for.
    from benchmarks.suite import run_suite

    out = run_suite(args.scale, ctx.settings, out_dir=args.out, rebuild=args.rebuild,
                    console=console)  # fmt: skip
    console.print(f"report: {out / 'report.md'}")
    return 0
