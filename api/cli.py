"""The `stratum` command line: parses arguments into calls on engine and sync, renders results."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.text import Text

from api import access_commands, commands, job_commands, lake_commands, tz_commands
from api.argtypes import comma_list, iso_date, non_negative, output_file, positive
from api.console import err_console
from engine.errors import InvalidParameter, StratumError
from engine.settings import load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stratum",
        description="Hybrid Parquet lakehouse query engine for participant time series.",
    )
    parser.add_argument("--debug", action="store_true", help="log debug output and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="manage the warm store (PostgreSQL/TimescaleDB)")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    # needs_schema=False: the commands that create the schema, or need none.
    db_sub.add_parser("init", help="create or migrate the schema (idempotent)").set_defaults(
        run=commands.db_init, needs_schema=False
    )
    db_sub.add_parser(
        "url", help="print the database URL (starts the private server)"
    ).set_defaults(run=commands.db_url, needs_schema=False)
    db_sub.add_parser("stop", help="stop the private PostgreSQL, if one runs").set_defaults(
        run=commands.db_stop, needs_schema=False
    )
    compress = db_sub.add_parser(
        "compress", help="move warm chunks past their grace period to TimescaleDB's columnstore"
    )
    compress.add_argument(
        "--older-than",
        type=positive,
        default=None,
        metavar="DAYS",
        help="compress chunks ending this many days ago or earlier "
        "(default $STRATUM_COLUMNSTORE_AFTER_DAYS)",
    )
    compress.set_defaults(run=lake_commands.db_compress)

    ingest = sub.add_parser("ingest", help="load CSV, Parquet or NDJSON files into raw_data")
    ingest.add_argument("files", nargs="+", type=Path, metavar="FILE")
    ingest.add_argument(
        "--ts-unit",
        choices=("s", "ms", "us"),
        default=None,
        help="ts holds integer epochs in seconds, milliseconds or microseconds "
        "(without it, integer ts columns are refused)",
    )
    ingest.set_defaults(run=commands.ingest)

    sub.add_parser("aggregate", help="refresh the 1m/1h/1d rollups of changed days").set_defaults(
        run=commands.aggregate
    )

    generate = sub.add_parser("generate", help="generate a synthetic cohort")
    generate.add_argument("--users", type=positive, required=True)
    generate.add_argument("--days", type=positive, required=True)
    generate.add_argument(
        "--start",
        type=iso_date,
        default=None,
        help="first day (default: so the cohort ends yesterday)",
    )
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--metrics", type=comma_list, default=None, help="comma-separated names")
    generate.add_argument(
        "--every",
        type=positive,
        default=None,
        metavar="SECONDS",
        help="sample every N seconds instead of each metric's native interval",
    )
    generate.add_argument("--first-user", type=non_negative, default=1, help="first user id")
    generate.add_argument(
        "--out",
        type=output_file,
        default=None,
        help="write a .csv/.parquet/.ndjson file instead (its folder must exist)",
    )
    generate.set_defaults(run=commands.generate, needs_schema=False)

    sub.add_parser("status", help="rows per tier and pending work").set_defaults(
        run=commands.status
    )

    demo = sub.add_parser("demo", help="set up a small cohort end to end and summarise it")
    demo.add_argument("--users", type=positive, default=5)
    demo.add_argument("--days", type=positive, default=30)
    demo.add_argument(
        "--serve", action="store_true", help="then serve the API and print example requests"
    )
    _server_options(demo)
    demo.set_defaults(run=commands.demo, needs_schema=False)

    serve = sub.add_parser("serve", help="serve the HTTP API (uvicorn)")
    _server_options(serve)
    serve.set_defaults(run=commands.serve)

    query = sub.add_parser(
        "query",
        help="rows for users x metrics x span, as /data answers them",
        description="Run a /data query in-process. Options take the same values as the "
        "HTTP parameters; --user and --metric repeat or take comma-separated lists.",
    )
    query.add_argument("--user", action="append", required=True, metavar="ID[,ID...]")
    query.add_argument("--metric", action="append", required=True, metavar="NAME[,NAME...]")
    query.add_argument("--start", help="ISO 8601 date or date-time (inclusive)")
    query.add_argument("--end", help="ISO 8601 date or date-time (exclusive)")
    query.add_argument("--start-date", help="instead of --start: the first day (YYYY-MM-DD)")
    query.add_argument("--end-date", help="instead of --end: the last day (YYYY-MM-DD), inclusive")
    query.add_argument(
        "--resolution", default=None, help="auto (default), raw, 1m, 1h, 1d, 1w or 1mo"
    )
    query.add_argument(
        "--tz",
        default=None,
        help="UTC (default), local (each participant's zone history) or an IANA name: "
        "1d/1w/1mo buckets are that calendar's, dates for --start/--end its dates",
    )
    query.add_argument("--max-points", default=None, help="points per series for auto")
    query.add_argument("--page-size", default=None, help="rows per page; 0: the whole answer")
    query.add_argument("--page-number", default=None)
    query.add_argument("--cursor", default=None, help="the cursor a previous page printed")
    query.add_argument("--downsample", default=None, help="m4: per pixel column (see --width)")
    query.add_argument("--width", default=None, help="pixel columns for --downsample m4")
    query.add_argument("--format", choices=commands.QUERY_FORMATS, default="table")
    query.add_argument(
        "--out",
        type=output_file,
        default=None,
        help="write csv/parquet/arrow here (else stdout); its folder must exist",
    )
    query.set_defaults(run=commands.query)
    bench = sub.add_parser(
        "bench", help="compare the backends on a dataset preset (see benchmarks/)"
    )
    bench.add_argument(
        "--scale",
        choices=commands.BENCH_SCALES,
        default="ci",
        help="ci (< 2 min), small (< 5 min), medium (< 20 min on 2 cores), large (big servers), "
        "cohort (500 participants x 2 years through backfill, resumable; hours on 2 cores)",
    )
    bench.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: benchmarks/results/<date>-<scale>)",
    )
    bench.add_argument(
        "--rebuild", action="store_true", help="rebuild the dataset even if its fingerprint matches"
    )
    bench.set_defaults(run=commands.bench, needs_schema=False)
    lake_commands.add_parsers(sub)  # sync, sync status, tier, maintain, scheduler
    access_commands.add_parsers(sub)  # cohort, key, audit
    tz_commands.add_parsers(sub)
    job_commands.add_parsers(sub)  # job run, job list
    return parser


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="bind address (default $STRATUM_HOST)")
    parser.add_argument("--port", type=positive, default=None, help="port (default $STRATUM_PORT)")


# Lake files, cohort files and the private database's files hold participants' data: what
# stratum creates is readable by its owner only (grant others access explicitly).
OWNER_ONLY_UMASK = 0o077


def main(argv: Sequence[str] | None = None) -> int:
    previous = os.umask(OWNER_ONLY_UMASK)
    try:
        return _main(argv)
    finally:
        os.umask(previous)  # the caller's, when main is called in-process (tests)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    run: Callable[[argparse.Namespace, commands.Context], int] = args.run
    try:
        context = commands.Context(load_settings(), getattr(args, "needs_schema", True))
        return run(args, context)
    except InvalidParameter as exc:
        _error("error:", f"{exc.parameter}: {exc.message}")
        return 2
    except StratumError as exc:
        _error("error:", exc.message)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as exc:  # never a stack trace for the user unless asked
        if args.debug:
            raise
        _error("unexpected error:", f"{type(exc).__name__}: {exc}")
        err_console.print("run again with --debug for the traceback")
        return 1


def _error(label: str, message: str) -> None:
    """One line on stderr, the message exactly as given (it quotes the user's input)."""
    err_console.print(Text.assemble((label, "red"), " ", message), highlight=False)


if __name__ == "__main__":
    sys.exit(main())
