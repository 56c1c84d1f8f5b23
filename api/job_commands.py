"""`stratum job`: cohort-wide jobs on Daft over the pinned lake, in process or on Ray."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from api.argtypes import iso_date
from api.console import Context, console
from jobs.features import JOBS
from jobs.run import run_job
from sync.access import parse_user_ranges


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    job = sub.add_parser("job", help="cohort-wide jobs over the lake (Daft, in process or Ray)")
    job_sub = job.add_subparsers(dest="job_action", required=True, metavar="ACTION")
    run = job_sub.add_parser(
        "run",
        help="run a job over a cohort's lake days into a new Delta table",
        description="Per participant-day features of the cohort's days in [--start, --end) "
        "that the lake holds (synced, verified, unchanged since), read at the version the "
        "catalog pinned. Days not in the lake are left out and counted.",
    )
    run.add_argument("name", metavar="NAME", help=f"one of: {', '.join(JOBS)}")
    run.add_argument("--cohort", required=True, metavar="C", help="a cohort (stratum cohort)")
    run.add_argument("--start", type=iso_date, required=True, help="first UTC day (YYYY-MM-DD)")
    run.add_argument(
        "--end", type=iso_date, required=True, help="the UTC day after the last (exclusive)"
    )
    run.add_argument("--out", type=Path, required=True, help="the new Delta table's folder")
    run.add_argument("--users", default=None, help="only these members of the cohort, e.g. 1-40,52")
    run.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run on this Ray cluster (e.g. 127.0.0.1:6379); default: in process",
    )
    run.set_defaults(run=job_run)
    job_sub.add_parser("list", help="the jobs and their definitions").set_defaults(
        run=job_list, needs_schema=False
    )


def job_run(args: argparse.Namespace, ctx: Context) -> int:
    users = None if args.users is None else parse_user_ranges(args.users)
    result = run_job(
        ctx.settings,
        ctx.url,
        args.name,
        args.cohort,
        args.start,
        args.end,
        args.out,
        users=users,
        ray_address=args.ray,
    )
    console.print(
        f"{result.job}: {result.rows:,} participant-days of {result.participants:,} "
        f"participants (cohort {result.cohort!r}, lake version {result.lake_version}) "
        f"in {result.seconds:.1f} s on {result.runner}, {result.chunks} chunk(s) -> {result.out}"
    )
    if result.skipped:
        first = ", ".join(f"{u}: {a}..{b}" for u, a, b in result.skipped[:5])
        more = ", ..." if len(result.skipped) > 5 else ""
        console.print(
            f"left out {result.skipped_days:,} participant-days not served from the lake "
            f"(not synced yet, changed since, or damaged): {first}{more}"
        )
    return 0


def job_list(args: argparse.Namespace, ctx: Context) -> int:
    table = Table(title="stratum jobs (one row per participant and UTC day)")
    table.add_column("job")
    table.add_column("metrics")
    table.add_column("definition")
    for job in JOBS.values():
        table.add_row(job.name, ", ".join(job.metrics), job.definition)
    console.print(table)
    return 0
