"""`stratum job run`: one cohort job over the pinned lake, on Daft, into a new Delta table.

run_job = check the input -> the cohort's scope -> the engine's pinned lake read (jobs.source)
-> per chunk of participants, Daft reads agg_1m at that version and computes the job
-> one Delta table at `out` (user_id, date, the job's columns), sorted.

In process, Daft's native runner streams each chunk in morsels on STRATUM_DUCKDB_THREADS
threads; chunks are sized from the Delta log's row counts so that each fits a quarter of
STRATUM_MEMORY_BUDGET. With a Ray address, the same plan runs on that cluster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from engine.access import Principal, cohort_principal
from engine.errors import (
    ConfigurationError,
    Forbidden,
    InvalidParameter,
    StratumError,
    WarmStoreUnavailable,
)
from engine.run import Engine
from engine.settings import Settings
from jobs.features import JOBS, KEY_SCHEMA, Job, output_schema
from jobs.source import ROW_BYTES, PinnedRead, Span, chunks, pin
from lake import LakeStorage

if TYPE_CHECKING:
    from daft import DataFrame
    from daft.io import IOConfig

log = logging.getLogger(__name__)

BUDGET_SHARE = 4  # a chunk's rows fit this fraction of the memory budget
RAY_FILES_PER_TASK = 200
_runner: str | None = None  # what this process set Daft to run on ("native" or a Ray address)


@dataclass(frozen=True)
class JobResult:
    job: str
    cohort: str
    out: Path
    rows: int
    participants: int
    lake_version: int | None
    chunks: int
    runner: str
    seconds: float
    skipped: tuple[tuple[int, date, date], ...] = field(default=())

    @property
    def skipped_days(self) -> int:
        return sum((last - first).days + 1 for _, first, last in self.skipped)


def job_named(name: str) -> Job:
    job = JOBS.get(name)
    if job is None:
        raise InvalidParameter("NAME", f"unknown job {name!r}; jobs: {', '.join(JOBS)}")
    return job


def check_span(start: date, end: date) -> None:
    if end <= start:
        raise InvalidParameter(
            "--end", f"--end ({end}) must be after --start ({start}): the days [start, end)"
        )


def check_out(out: Path) -> None:
    """A new table in an existing folder: a job never adds to or replaces a table."""
    if out.exists():
        raise InvalidParameter(
            "--out", f"{str(out)!r} exists; a job writes a new table: pick another path"
        )
    if not out.parent.is_dir():
        raise InvalidParameter(
            "--out", f"folder {str(out.parent)!r} does not exist; create it first or pick another"
        )


def scope(database_url: str, cohort: str, users: Sequence[int] | None) -> Principal:
    """The cohort's principal, narrowed to `users` (each of which must be a member)."""
    try:
        with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
            principal = cohort_principal(conn, cohort)
    except psycopg.OperationalError as exc:
        raise WarmStoreUnavailable(
            f"the warm store is unreachable ({exc}); a job reads the cohort and the lake's "
            "catalog from it"
        ) from None
    if users is None:
        return principal
    outside = sorted(u for u in set(users) if not principal.sees_user(u))
    if outside:
        listed = ", ".join(map(str, outside[:5])) + (", ..." if len(outside) > 5 else "")
        raise Forbidden(f"participants {listed} are not in cohort {cohort!r}", parameter="--users")
    return Principal(principal.name, False, frozenset(users), None)


def require_daft() -> None:
    try:
        import daft  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "stratum job needs Daft: install the jobs extra (pip install 'stratum[jobs]')",
            parameter="NAME",
        ) from None


def use_runner(ray_address: str | None, threads: int) -> str:
    """Point Daft at Ray or at its in-process runner (once per process: Daft's rule)."""
    import daft

    global _runner
    wanted = ray_address or "native"
    if _runner is None:
        if ray_address:
            # The lake holds a file per user-day: one Ray task per file costs more than its
            # work. Merging up to this many files per scan task halved a 6.9M-row job.
            daft.set_execution_config(
                enable_scan_task_split_and_merge=True, max_sources_per_scan_task=RAY_FILES_PER_TASK
            )
            daft.set_runner_ray(ray_address)
        else:
            daft.set_runner_native(num_threads=threads)
        _runner = wanted
    elif _runner != wanted:
        raise StratumError(
            f"this process already runs Daft on {_runner}; run the job in a new process"
        )
    return wanted


def _is_ray_connection_error(exc: Exception) -> bool:
    from ray.exceptions import AuthenticationError

    return isinstance(exc, AuthenticationError | ConnectionError)


def io_config(storage: LakeStorage) -> IOConfig | None:
    """Daft's S3 settings from the lake's (the standard AWS variables); None on a folder."""
    if storage.is_local:
        return None
    from daft.io import IOConfig, S3Config

    options = storage.options
    endpoint = options.get("AWS_ENDPOINT_URL")
    return IOConfig(
        s3=S3Config(
            endpoint_url=endpoint,
            key_id=options.get("AWS_ACCESS_KEY_ID"),
            access_key=options.get("AWS_SECRET_ACCESS_KEY"),
            session_token=options.get("AWS_SESSION_TOKEN"),
            region_name=options.get("AWS_REGION") or "us-east-1",
            use_ssl=not (endpoint or "").startswith("http://"),
        )
    )


def _read(pinned: PinnedRead, spans: list[Span], job: Job, io: IOConfig | None) -> DataFrame:
    """agg_1m rows of these spans at the pinned version: one scan per day range, pruned to
    its participants' partitions (user_id, month) and to the files whose `date` statistics
    overlap the range when Daft plans it."""
    import daft
    from daft import col, lit

    by_range: dict[tuple[date, date], list[int]] = {}
    for span in spans:
        by_range.setdefault((span.first_day, span.last_day), []).extend(span.users)
    frames = []
    for (first, last), users in sorted(by_range.items()):
        table = daft.read_deltalake(pinned.table_dir, version=pinned.version, io_config=io)
        frames.append(
            table.where(
                col("user_id").is_in(sorted(users))
                & (col("date") >= lit(first))
                & (col("date") <= lit(last))
                & col("metric").is_in(list(job.metrics))
            ).select("user_id", "date", "metric", "ts", "count", "sum")
        )
    combined = frames[0]
    for frame in frames[1:]:
        combined = combined.concat(frame)
    return combined


def _with_every_day(job: Job, computed: pa.Table, spans: list[Span]) -> pa.Table:
    """One row per participant-day the lake holds: days without the job's metrics get the
    job's empty values."""
    schema = output_schema(job)
    computed = computed.select(schema.names).cast(schema)
    days = [day for span in spans for day in span.days()]
    every = pa.table(
        {"user_id": [u for u, _ in days], "date": [d for _, d in days]}, schema=KEY_SCHEMA
    )
    found = computed.select(["user_id", "date"])
    missing = every.join(found, ["user_id", "date"], join_type="left anti")
    filler: dict[str, Any] = {
        name: pa.array([job.empty[name]] * missing.num_rows, type=schema.field(name).type)
        for name in job.columns.names
    }
    padded = pa.table(
        {"user_id": missing["user_id"], "date": missing["date"], **filler}, schema=schema
    )
    return pa.concat_tables([computed, padded])


def compute(
    job: Job, pinned: PinnedRead, budget_rows: int, io: IOConfig | None
) -> tuple[pa.Table, int]:
    """The job's table (sorted by user_id, date) and how many chunks it took."""
    parts = []
    planned = chunks(pinned.spans, budget_rows)
    for number, chunk in enumerate(planned, 1):
        log.debug("chunk %d/%d: %d participants", number, len(planned), len(chunk))
        computed = job.compute(_read(pinned, chunk, job, io)).to_arrow()
        parts.append(_with_every_day(job, computed, chunk))
    schema = output_schema(job)
    table = pa.concat_tables(parts) if parts else schema.empty_table()
    order = pc.sort_indices(table, [("user_id", "ascending"), ("date", "ascending")])
    return table.take(order), len(planned)


def run_job(
    settings: Settings,
    database_url: str,
    name: str,
    cohort: str,
    start: date,
    end: date,
    out: Path,
    *,
    users: Sequence[int] | None = None,
    ray_address: str | None = None,
) -> JobResult:
    from deltalake import write_deltalake

    began = time.monotonic()
    job = job_named(name)
    require_daft()
    check_span(start, end)
    check_out(out)
    principal = scope(database_url, cohort, users)
    assert principal.users is not None  # a cohort's scope is its members
    members = tuple(sorted(principal.users))
    engine = Engine(settings, database_url)
    try:
        pinned = pin(engine, principal, members, job.metrics, start, end)
        io = io_config(engine.lake.storage)
    finally:
        engine.close()
    budget_rows = max(1, settings.memory.budget_bytes // BUDGET_SHARE // ROW_BYTES)
    try:
        runner = use_runner(ray_address, settings.memory.duckdb_threads)
        table, chunk_count = compute(job, pinned, budget_rows, io)
    except Exception as exc:
        if ray_address and _is_ray_connection_error(exc):
            raise StratumError(
                f"could not use the Ray cluster at {ray_address}: {exc} (token auth: set "
                "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token)",
                parameter="--ray",
            ) from None
        raise
    write_deltalake(str(out), table, mode="error")
    return JobResult(
        job=name,
        cohort=cohort,
        out=out,
        rows=table.num_rows,
        participants=len(set(table.column("user_id").to_pylist())),
        lake_version=pinned.version,
        chunks=chunk_count,
        runner=runner,
        seconds=time.monotonic() - began,
        skipped=pinned.skipped,
    )
