"""Implementations of the `stratum` subcommands (argument parsing lives in api/cli.py)."""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.measure import Measurement
from rich.progress import Progress
from rich.table import Table

from api.console import Context, console, err_console, progress
from api.lake_commands import demo_sync
from engine.access import LOCAL_ADMIN
from engine.errors import StratumError
from engine.settings import require_auth_or_loopback
from sync import access, localdb
from sync.cohort_files import write_cohort
from sync.generate import generate_cohort
from sync.ingest import ingest_files, ingest_tables
from sync.rollups import refresh_rollups, warm_tier_counts
from sync.schema import init_schema


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
    url = ctx.url  # checked before a progress bar shows
    with progress() as bar:
        task = bar.add_task("ingest", total=len(args.files), rows=0)
        for path in args.files:
            result = ingest_files(url, [path], ts_unit=args.ts_unit)
            total_rows += result.rows
            bar.update(task, advance=1, rows=total_rows)
            console.print(
                f"{path}: {result.rows:,} rows, {result.days_marked} days marked, "
                f"{result.rows_per_s:,.0f} rows/s"
            )
    return 0


def aggregate(args: argparse.Namespace, ctx: Context) -> int:
    result = refresh_rollups(ctx.url, workers=ctx.settings.database.refresh_workers)
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
        args.users,
        args.days,
        start,
        seed=args.seed,
        metrics=args.metrics,
        every_s=args.every,
        first_user_id=args.first_user,
    )
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


def status(args: argparse.Namespace, ctx: Context) -> int:
    table = Table(title="warm store")
    table.add_column("tier")
    table.add_column("rows", justify="right")
    for name, count in warm_tier_counts(ctx.url).items():
        table.add_row(name, f"{count:,}")
    console.print(table)
    return 0


def demo(args: argparse.Namespace, ctx: Context) -> int:
    console.rule("stratum demo")
    init = init_schema(ctx.url, ctx.settings.database.chunk_interval)
    console.print(f"warm store: {ctx.url} (TimescaleDB: {'yes' if init.timescaledb else 'no'})")
    gen_args = argparse.Namespace(
        users=args.users,
        days=args.days,
        start=None,
        seed=0,
        metrics=None,
        every=None,
        first_user=1,
        out=None,
    )
    generate(gen_args, ctx)
    aggregate(args, ctx)
    demo_sync(ctx)
    status(args, ctx)
    if getattr(args, "serve", False):
        server = ctx.settings.server
        host = args.host or server.host
        port = args.port or server.port
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        console.rule(f"serving the API on http://{shown}:{port} (Ctrl-C stops)")
        key_text = demo_key(ctx.url, args.users)
        console.print(f"the demo cohort's key (for participants 1-{args.users}): {key_text}")
        for example in demo_requests(
            f"http://{shown}:{port}", args.users, default_start(args.days), args.days, key_text
        ):
            console.print(example, highlight=False)
        console.print(
            f"explorer page: http://{shown}:{port}/ (enter the key above)  "
            f"OpenAPI: http://{shown}:{port}/schema  catalog: http://{shown}:{port}/catalog",
            highlight=False,
        )
        return serve(args, ctx)
    return 0


# -- `stratum bench` -------------------------------------------------------------------------

COHORT_SCALE = "cohort"  # benchmarks/cohort.py: 500 participants x 2 years through backfill
# benchmarks.presets.PRESETS, then the cohort (a test checks)
BENCH_SCALES = ("ci", "small", "medium", "large", COHORT_SCALE)


# Our packages: a module of these that fails to import is a bug, not a missing extra.
OWN_PACKAGES = ("engine", "lake", "sync", "benchmarks", "api")


def missing_bench_extra(exc: ImportError) -> str | None:
    """What to tell the user when the bench cannot import a package of the `bench` extra
    (serving does not need them); None when the failure is not a missing package."""
    missing = (exc.name or "").split(".")[0]
    if not isinstance(exc, ModuleNotFoundError) or not missing or missing in OWN_PACKAGES:
        return None
    return (
        f"`stratum bench` needs the bench extra ({missing} is not installed): "
        "pip install 'stratum[bench]' (in a checkout: pip install -e '.[bench]')"
    )


def bench(args: argparse.Namespace, ctx: Context) -> int:
    # The suite needs the bench extra and imports the whole stack: load it only when asked.
    try:
        from benchmarks.cohort import run_cohort
        from benchmarks.suite import run_suite
    except ImportError as exc:
        message = missing_bench_extra(exc)
        if message is None:
            raise
        raise StratumError(message) from None

    if args.scale == COHORT_SCALE:  # its own build (backfill) and targets (issue 12)
        report = run_cohort(ctx.settings, out_dir=args.out, rebuild=args.rebuild)
        console.print(f"report: {report}")
        return 0

    # The bench serves the API the way `stratum serve` does, in a process of its own.
    serve_command = (sys.executable, "-m", "api.cli", "serve")
    out = run_suite(
        args.scale,
        ctx.settings,
        progress_bar=progress,
        serve_command=serve_command,
        out_dir=args.out,
        rebuild=args.rebuild,
    )
    console.print(f"report: {out / 'report.md'}")
    return 0


# -- the query side: `stratum query`, `stratum serve`, the end of `stratum demo` -----------

QUERY_FORMATS = ("table", "csv", "parquet", "arrow")
_WIDEST = 100_000  # columns a table may take when laid out at its natural width


def query_params(args: argparse.Namespace) -> dict[str, list[str]]:
    """The /data parameters from `stratum query` options (validated by the engine)."""
    params: dict[str, list[str]] = {
        "user_id": list(args.user or []),
        "metric": list(args.metric or []),
    }
    single = {
        "start": args.start,
        "end": args.end,
        "start_date": args.start_date,
        "end_date": args.end_date,
        "resolution": args.resolution,
        "max_points": args.max_points,
        "page_size": args.page_size,
        "page_number": args.page_number,
        "cursor": args.cursor,
        "downsample": args.downsample,
        "width": args.width,
        "tz": getattr(args, "tz", None),
    }
    params.update({k: [str(v)] for k, v in single.items() if v is not None})
    return params


def _answer_table(answer: Any, page: pa.Table) -> Table:
    from api import render  # the API's renderers: the table shows what JSON answers show

    table = Table(
        title=f"{answer.plan.answer_resolution} rows from {', '.join(answer.plan.sources)}"
    )
    texts = []
    for field_, column in zip(page.schema, page.columns, strict=True):
        numeric = pa.types.is_integer(field_.type) or pa.types.is_floating(field_.type)
        table.add_column(field_.name, justify="right" if numeric else "left", no_wrap=True)
        texts.append(render.text_column(field_.name, column).to_pylist())
    for row in zip(*texts, strict=True):
        table.add_row(*row)
    return table


def print_whole(table: Table) -> None:
    """Print a table at its natural width, wider than the console if need be: rich would
    otherwise squeeze columns to the terminal (80 columns when piped) and cut values."""
    natural = Measurement.get(console, console.options.update_width(_WIDEST), table).maximum
    if natural <= console.width:
        console.print(table)
        return
    wide = Console(
        file=console.file,
        width=natural,
        markup=False,
        force_terminal=console.is_terminal,
        no_color=console.no_color,
    )
    wide.print(table)


def query(args: argparse.Namespace, ctx: Context) -> int:
    from api import render  # the API's renderers: CLI and HTTP files are byte-identical
    from engine.errors import InvalidParameter
    from engine.query import build_query
    from engine.run import Engine

    engine = Engine(ctx.settings, ctx.url)
    try:
        data_query = build_query(
            query_params(args),
            ctx.settings.query,
            principal=LOCAL_ADMIN,
            cursor_secret=engine.cursor_secret(),
        )
        binary = args.format in ("parquet", "arrow")
        if data_query.page_size == 0 and args.format == "table":
            raise InvalidParameter(
                "page_size", "page_size 0 (the whole answer) needs --format csv, parquet or arrow"
            )
        if binary and args.out is None and sys.stdout.isatty():
            raise InvalidParameter(
                "out", f"--format {args.format} is binary: pass --out FILE or redirect stdout"
            )
        answer = engine.run(data_query)
        if args.format == "table":
            page = pa.Table.from_batches(list(answer.batches), schema=answer.schema)
            print_whole(_answer_table(answer, page))
            console.file.flush()
        else:
            chunks = render.stream(args.format, answer.batches, answer.schema, data_query.metrics)
            if args.out is None:
                for chunk in chunks:
                    sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            else:
                tmp = args.out.with_name(args.out.name + ".part")
                with open(tmp, "wb") as out:
                    for chunk in chunks:
                        out.write(chunk)
                tmp.replace(args.out)  # whole or not at all
        if args.format == "table" or args.out is not None:
            more = f"; next page: --cursor {answer.next_cursor}" if answer.has_more else ""
            written = f" to {args.out}" if args.out is not None else ""
            rows_text = "" if answer.rows is None else f"{answer.rows:,} rows"
            sources = ", ".join(answer.plan.sources) or "nowhere"
            err_console.print(
                f"{rows_text}{written} ({answer.plan.answer_resolution}, from {sources}){more}",
                highlight=False,
            )
    finally:
        engine.close()
    return 0


def serve(args: argparse.Namespace, ctx: Context) -> int:
    import uvicorn

    from api.app import create_app
    from api.serving import uvicorn_options

    server = ctx.settings.server
    host = args.host or server.host
    port = args.port or server.port
    require_auth_or_loopback(ctx.settings.access.auth, host)
    logging.getLogger().setLevel(server.log_level.upper())
    # The bind address as given on the command line is a Host the API answers by default.
    settings = replace(ctx.settings, server=replace(server, host=host))
    app = create_app(settings, ctx.url)
    uvicorn.run(app, host=host, port=port, **uvicorn_options(server))
    return 0


def demo_key(url: str, users: int) -> str:
    """A new key for the `demo` cohort (participants 1..users), made for this run."""
    members = list(range(1, users + 1))
    if any(c.name == "demo" for c in access.list_cohorts(url)):
        access.add_members(url, "demo", members)
    else:
        access.create_cohort(url, "demo", members)
    name = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    return access.create_key(
        url, name, admin=False, cohorts=["demo"], metrics=None, expires_in=timedelta(days=30)
    )


def demo_requests(base: str, users: int, start: date, days: int, key_text: str) -> list[str]:
    """Three example requests against the demo cohort, with its key."""
    first, last = start.isoformat(), (start + timedelta(days=days)).isoformat()
    hour = f"{(start + timedelta(days=days - 1)).isoformat()}T12:00:00Z"
    hour_end = f"{(start + timedelta(days=days - 1)).isoformat()}T13:00:00Z"
    cohort = ",".join(str(u) for u in range(1, min(users, 3) + 1))
    header = f'-H "Authorization: Bearer {key_text}"'
    return [
        f"curl {header} '{base}/data?user_id=1&metric=heart_rate&start={hour}&end={hour_end}"
        "&page_size=5'",
        f"curl {header} '{base}/data?user_id={cohort}&metric=steps,heart_rate&start={first}"
        f"&end={last}&resolution=1d&format=csv'",
        f"curl {header} -o cohort.parquet '{base}/data?user_id={cohort}&metric=heart_rate"
        f"&start={first}&end={last}&resolution=1m&page_size=0&format=parquet'",
    ]
