"""The sync jobs as plain functions: each records its run in sync_runs and returns a JobResult.

The CLI calls them one at a time; the scheduler (sync/scheduler.py) calls `nightly_job`
(refresh rollups, sync, tier, compress, maintain, verify, then the calendar cache prefilled and
pruned) and `refresh_job` on their triggers. The prefill is computed by the query side
(engine/calendarprefill.py): the caller hands it in, as this side may not import the engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import psycopg

from engine.errors import SyncFailed
from engine.settings import LakeSettings
from lake import Lake
from lake.integrity import file_days
from sync import backfill
from sync.calendar_cache import prune_calendar_cache
from sync.catalog_changes import KEPT, prune_catalog_changes
from sync.columnstore import compress_warm_store
from sync.export import Progress, SyncResult, sync_to_lake
from sync.lakefiles import (
    prune_file_records,
    record_checked_files,
    record_damage,
    require_current_log,
)
from sync.maintenance import maintain_lake
from sync.rollups import REFRESH_WORKERS, refresh_rollups
from sync.runs import NIGHTLY_LOCK, JobResult, finish_run, start_run
from sync.tiering import tier_warm_store
from sync.verify import repair_lake, verify_lake

log = logging.getLogger(__name__)

CATCH_UP_AFTER = timedelta(days=1)


def _problems(
    problems: Sequence[tuple[Any, ...]],
    what: str,
    describe: Callable[[tuple[Any, ...]], str],
    shown: int = 3,
) -> str | None:
    """A failed job's error: how many problems, what they are, and the first few named."""
    if not problems:
        return None
    return f"{len(problems)} {what}: " + ", ".join(describe(p) for p in problems[:shown])


def _lake_day(problem: tuple[Any, ...]) -> str:
    """A (user, table, day, ...) problem named as "user U DAY TABLE"."""
    user_id, table, day = problem[:3]
    return f"user {user_id} {day} {table}"


def run_job(url: str, job: str, body: Callable[[], JobResult]) -> JobResult:
    """Run `body` recorded as a `job` run; a failure is recorded, then re-raised."""
    with psycopg.connect(url, autocommit=True) as conn:  # open for the run: shows it alive
        run_id = start_run(conn, job)
        started = time.perf_counter()
        try:
            result = body()
        except BaseException as exc:
            partial = getattr(exc, "result", None)
            failed = _from_sync(partial) if isinstance(partial, SyncResult) else JobResult(job)
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - started
            finish_run(
                conn, run_id, replace(failed, status="failed", error=message, seconds=seconds)
            )
            raise
        finish_run(conn, run_id, result)
        return result


def refresh_job(url: str, workers: int = REFRESH_WORKERS) -> JobResult:
    def body() -> JobResult:
        refreshed = refresh_rollups(url, workers=workers)
        return JobResult(
            "refresh",
            days=refreshed.days,
            rows=sum(refreshed.rows.values()),
            seconds=refreshed.seconds,
            detail=refreshed,
        )

    return run_job(url, "refresh", body)


def prune_cache_job(url: str, max_rows: int) -> JobResult:
    """Drop the oldest calendar-cache entries beyond `max_rows` (rows: how many)."""

    def body() -> JobResult:
        started = time.perf_counter()
        pruned = prune_calendar_cache(url, max_rows)
        if pruned.prefilled:
            log.warning(
                "calendar cache: %d prefilled entries pruned (STRATUM_CALENDAR_CACHE_ROWS=%d is "
                "smaller than the prefilled days); their %d days are prefilled again next night",
                pruned.prefilled,
                max_rows,
                pruned.days_unfilled,
            )
        return JobResult(
            "prune_cache",
            rows=pruned.dropped,
            seconds=time.perf_counter() - started,
            detail=pruned,
        )

    return run_job(url, "prune_cache", body)


class Prefilled(Protocol):
    """What a calendar prefill reports (engine/calendarprefill.py: the write side runs it,
    the query side computes it)."""

    @property
    def days(self) -> int: ...
    @property
    def computed(self) -> int: ...
    @property
    def seconds(self) -> float: ...


def prefill_cache_job(url: str, prefill: Callable[[], Prefilled]) -> JobResult:
    """Compute the calendar cache's entries for the days changed since the last prefill
    (days: (participant, day) pairs; rows: entries computed)."""

    def body() -> JobResult:
        done = prefill()
        return JobResult(
            "prefill_cache", days=done.days, rows=done.computed, seconds=done.seconds, detail=done
        )

    return run_job(url, "prefill_cache", body)


def _from_sync(result: SyncResult) -> JobResult:
    return JobResult(
        "sync",
        days=result.days,
        rows=result.total_rows,
        bytes=result.bytes,
        files=result.files,
        seconds=result.seconds,
        lake_versions=dict(result.versions),
        detail=result,
    )


def sync_job(
    url: str,
    settings: LakeSettings,
    *,
    today: date | None = None,
    progress: Progress | None = None,
    lake: Lake | None = None,
) -> JobResult:
    def body() -> JobResult:
        return _from_sync(
            sync_to_lake(
                url,
                lake or Lake(settings.path),
                grace_days=settings.sync_grace_days,
                batch_days=settings.sync_batch_days,
                today=today,
                progress=progress,
            )
        )

    return run_job(url, "sync", body)


def backfill_job(
    url: str,
    settings: LakeSettings,
    paths: list[Path],
    *,
    older_than_days: int | None = None,
    today: date | None = None,
    **options: Any,
) -> JobResult:
    """`stratum backfill`, recorded as a `backfill` run; `options` go to backfill_files."""

    def body() -> JobResult:
        result = backfill.backfill_files(
            url,
            Lake(settings.path),
            paths,
            older_than_days=older_than_days or settings.tier_older_than_days,
            grace_days=settings.sync_grace_days,
            today=today,
            **options,
        )
        return JobResult(
            "backfill",
            days=result.days,
            rows=result.rows,
            bytes=result.bytes,
            files=result.lake_files,
            seconds=result.seconds,
            detail=result,
        )

    return run_job(url, "backfill", body)


def tiering_job(
    url: str,
    settings: LakeSettings,
    *,
    older_than_days: int | None = None,
    today: date | None = None,
    progress: Progress | None = None,
    lake: Lake | None = None,
) -> JobResult:
    def body() -> JobResult:
        tiered = tier_warm_store(
            url,
            lake or Lake(settings.path),
            older_than_days=older_than_days or settings.tier_older_than_days,
            batch_days=settings.sync_batch_days,
            today=today,
            progress=progress,
        )
        error = _problems(
            tiered.refused,
            "days not tiered (queued for re-sync)",
            lambda p: f"user {p[0]} {p[1]}: {p[2]}",
        )
        return JobResult(
            "tier",
            status="failed" if error else "ok",
            days=tiered.days,
            rows=tiered.total_rows,
            files=tiered.chunks,
            seconds=tiered.seconds,
            error=error,
            detail=tiered,
        )

    return run_job(url, "tier", body)


def columnstore_job(
    url: str,
    settings: LakeSettings,
    *,
    after_days: int | None = None,
    today: date | None = None,
) -> JobResult:
    """Compress the warm chunks older than `after_days` (TimescaleDB only; 0: none)."""
    days = settings.columnstore_after_days if after_days is None else after_days

    def body() -> JobResult:
        if days == 0:
            return JobResult("compress")
        cutoff = datetime.combine(today or utc_now().date(), datetime.min.time(), UTC)
        done = compress_warm_store(url, cutoff - timedelta(days=days))
        return JobResult(
            "compress",
            files=done.chunks,
            bytes=done.bytes_after,
            seconds=done.seconds,
            detail=done,
        )

    return run_job(url, "compress", body)


def maintain_job(
    url: str, settings: LakeSettings, lake: Lake | None = None, today: date | None = None
) -> JobResult:
    opened = lake or Lake(settings.path)
    # Months whose last day is older than this are settled: late data is no longer expected.
    settled_before = (today or utc_now().date()) - timedelta(days=settings.compact_after_days)

    def body() -> JobResult:
        with psycopg.connect(url, autocommit=True) as conn:
            require_current_log(conn, opened)  # a compaction commit would reuse lost versions
            done = maintain_lake(opened, settings.vacuum_retention_hours, settled_before)
            damaged = [
                (user_id, table, day, f"{relative}: {why}")
                for table, compacted in done.compacted.items()
                for relative, lake_file, why in compacted.damaged
                for user_id, day in file_days(lake_file)
            ]
            # Compacted files are committed files too: their hashes are what readers and
            # tiering check, recorded once their days agree with the verified records.
            differing = [
                problem
                for table, compacted in done.compacted.items()
                if compacted.version is not None
                for problem in record_checked_files(conn, table, compacted.version, compacted.added)
            ]
            record_damage(conn, damaged + differing)
            prune_file_records(conn, opened)
            pruned = prune_catalog_changes(conn)
            log.info("maintain: %d catalog changes older than %s pruned", pruned, KEPT)
        error = _problems(
            damaged,
            "damaged lake days left uncompacted (queued for repair)",
            _lake_day,
            shown=5,
        ) or _problems(
            differing,
            "lake days compacted as they were, but not as verified (queued for repair)",
            _lake_day,
            shown=5,
        )
        return JobResult(
            "maintain",
            status="failed" if error else "ok",
            files=done.files_rewritten + done.files_deleted,
            bytes=done.bytes_after,
            seconds=done.seconds,
            lake_versions=done.versions,
            error=error,
            detail=done,
        )

    return run_job(url, "maintain", body)


def verify_job(url: str, settings: LakeSettings, lake: Lake | None = None) -> JobResult:
    def body() -> JobResult:
        done = verify_lake(url, lake or Lake(settings.path), settings.scrub_nights)
        error = _problems(
            done.damaged,
            "damaged lake days (run `stratum repair`)",
            lambda p: f"{_lake_day(p)}: {p[3]}",
        )
        return JobResult(
            "verify",
            status="failed" if error else "ok",
            days=len(done.damaged),
            files=done.files,
            bytes=done.bytes,
            seconds=done.seconds,
            error=error,
            detail=done,
        )

    return run_job(url, "verify", body)


def repair_job(url: str, settings: LakeSettings, *, today: date | None = None) -> JobResult:
    def body() -> JobResult:
        done = repair_lake(
            url,
            Lake(settings.path),
            grace_days=settings.sync_grace_days,
            batch_days=settings.sync_batch_days,
            today=today,
        )
        error = _problems(
            done.backup_only,
            "lake days only a backup can restore",
            _lake_day,
            shown=5,
        )
        return JobResult(
            "repair",
            status="failed" if error else "ok",
            days=len(done.requeued),
            rows=done.sync.total_rows if done.sync else 0,
            seconds=done.seconds,
            error=error,
            detail=done,
        )

    return run_job(url, "repair", body)


def nightly_job(
    url: str,
    settings: LakeSettings,
    *,
    today: date | None = None,
    lake: Lake | None = None,
    calendar_cache_rows: int | None = None,
    prefill: Callable[[], Prefilled] | None = None,
    refresh_workers: int = REFRESH_WORKERS,
) -> JobResult:
    """Refresh rollups (on `refresh_workers` connections), sync, tier, maintain and verify,
    each recorded, then prefill the calendar cache (`prefill`, None: not) and prune it to
    `calendar_cache_rows` (None: left alone); later steps run even when an earlier one failed
    (each is safe alone). Skipped if another scheduler runs it now.

    The prefill runs before the pruning, which keeps prefilled entries longest (entries filled
    on demand go first): what the night computed for the first answers is kept.

    `lake`: the steps share it (default: a new one for this run). The scheduler passes one
    Lake for its whole life, so each night reads only the lake's new commits: opening a
    table's whole file list costs what the lake holds, not what the night adds."""
    lake = lake or Lake(settings.path)
    with psycopg.connect(url, autocommit=True) as lock:
        row = lock.execute("SELECT pg_try_advisory_lock(%s)", (NIGHTLY_LOCK,)).fetchone()
        if not row or not row[0]:
            log.warning("nightly job already running elsewhere; skipped")
            return _record_skipped(url, "nightly", "another scheduler is running the nightly job")
        try:
            return run_job(
                url,
                "nightly",
                lambda: _nightly_steps(
                    url, settings, today, lake, calendar_cache_rows, prefill, refresh_workers
                ),
            )
        finally:
            lock.execute("SELECT pg_advisory_unlock(%s)", (NIGHTLY_LOCK,))


def _nightly_steps(
    url: str,
    settings: LakeSettings,
    today: date | None,
    lake: Lake,
    calendar_cache_rows: int | None,
    prefill: Callable[[], Prefilled] | None = None,
    refresh_workers: int = REFRESH_WORKERS,
) -> JobResult:
    started = time.perf_counter()
    steps: list[tuple[str, Callable[[], JobResult]]] = [
        ("refresh", lambda: refresh_job(url, refresh_workers)),
        ("sync", lambda: sync_job(url, settings, today=today, lake=lake)),
        ("tier", lambda: tiering_job(url, settings, today=today, lake=lake)),
        ("compress", lambda: columnstore_job(url, settings, today=today)),
        ("maintain", lambda: maintain_job(url, settings, lake)),
        ("verify", lambda: verify_job(url, settings, lake)),  # the nightly scrub
    ]
    if prefill is not None:
        steps.append(("prefill_cache", lambda: prefill_cache_job(url, prefill)))
    if calendar_cache_rows is not None:
        steps.append(("prune_cache", lambda: prune_cache_job(url, calendar_cache_rows)))
    results: dict[str, JobResult] = {}
    errors: list[str] = []
    for name, step in steps:
        try:
            results[name] = step()
            if results[name].status == "failed":
                errors.append(f"{name}: {results[name].error}")
        except Exception as exc:  # recorded by run_job; the other steps still run
            log.exception("nightly step %s failed", name)
            errors.append(f"{name}: {getattr(exc, 'message', None) or exc}")
    synced = results.get("sync")
    result = JobResult(
        "nightly",
        status="failed" if errors else "ok",
        days=synced.days if synced else 0,
        rows=synced.rows if synced else 0,
        bytes=synced.bytes if synced else 0,
        files=synced.files if synced else 0,
        seconds=time.perf_counter() - started,
        lake_versions=dict(synced.lake_versions) if synced else {},
        error="; ".join(errors) or None,
        detail=results,
    )
    if errors:
        log.error("nightly job failed: %s", result.error)
    return result


def _record_skipped(url: str, job: str, why: str) -> JobResult:
    result = JobResult(job, status="skipped", error=why)
    with psycopg.connect(url, autocommit=True) as conn:
        finish_run(conn, start_run(conn, job), result)
    return result


def needs_catch_up(last_success: datetime | None, now: datetime) -> bool:
    """Run the nightly job at start-up when it never succeeded or last did over a day ago."""
    return last_success is None or now - last_success > CATCH_UP_AFTER


def utc_now() -> datetime:
    return datetime.now(UTC)


def require_ok(result: JobResult) -> JobResult:
    """Raise SyncFailed for a job that finished but reported failure (for the CLI)."""
    if result.status == "failed":
        raise SyncFailed(f"{result.job} failed: {result.error}")
    return result
