"""APScheduler wiring (`stratum scheduler`), and nothing else: the jobs live in sync/jobs.py.

Two jobs, in UTC: the nightly job (refresh, sync, tier, compress, maintain, verify: the lake
scrub; then the calendar cache prefilled and pruned) at STRATUM_NIGHTLY_CRON, and an hourly rollup
refresh. Neither runs twice at once (max_instances=1), missed runs collapse into one
(coalesce) and start only within STRATUM_MISFIRE_GRACE_S of their time.
Two schedulers may run side by side: the nightly job takes an advisory lock and the sync
and tiering steps another, so only one of them does the work. On start the nightly job runs
at once when its last success is over a day old (the machine was down at 02:00).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger

from engine.errors import ConfigurationError
from engine.settings import Settings
from lake import Lake
from sync import jobs
from sync.runs import last_success

log = logging.getLogger(__name__)

HOURLY_REFRESH_CRON = "0 * * * *"
UTC_ZONE = "UTC"


def nightly_trigger(crontab: str) -> CronTrigger:
    try:
        return CronTrigger.from_crontab(crontab, timezone=UTC_ZONE)
    except ValueError as exc:
        raise ConfigurationError(
            f"STRATUM_NIGHTLY_CRON={crontab!r} is not a crontab (minute hour day month "
            f"weekday): {exc}",
            parameter="STRATUM_NIGHTLY_CRON",
        ) from None


def build_scheduler(
    url: str,
    settings: Settings,
    now: datetime | None = None,
    scheduler_class: type[BaseScheduler] = BlockingScheduler,
    prefill: Callable[[], jobs.Prefilled] | None = None,
) -> BaseScheduler:
    """The configured scheduler, not started; the nightly job is due now if it must catch up.

    `scheduler_class`: tests pass BackgroundScheduler to start it paused and inspect it.
    `prefill`: the nightly calendar-cache prefill (the query side computes it: the caller,
    which may build an engine, hands it in); None: none.
    """
    scheduler = scheduler_class(
        timezone=UTC_ZONE,
        job_defaults={
            "max_instances": 1,
            "coalesce": True,
            "misfire_grace_time": settings.scheduler.misfire_grace_s,
        },
    )
    now = now or jobs.utc_now()
    catch_up: dict[str, Any] = {}
    if jobs.needs_catch_up(last_success(url, "nightly"), now):
        log.info("nightly job last succeeded over a day ago (or never): running it now")
        catch_up["next_run_time"] = now
    scheduler.add_job(
        jobs.nightly_job,
        nightly_trigger(settings.scheduler.nightly_cron),
        args=(url, settings.lake),
        # One Lake for the scheduler's life: each night reads only the new commits.
        kwargs={
            "lake": Lake(settings.lake.path),
            "calendar_cache_rows": settings.query.calendar_cache_rows,
            "prefill": prefill,
            "refresh_workers": settings.database.refresh_workers,
        },
        id="nightly",
        name="nightly: refresh, sync, tier, compress, maintain, verify, prefill",
        replace_existing=True,
        **catch_up,
    )
    scheduler.add_job(
        jobs.refresh_job,
        CronTrigger.from_crontab(HOURLY_REFRESH_CRON, timezone=UTC_ZONE),
        args=(url, settings.database.refresh_workers),
        id="refresh",
        name="hourly rollup refresh",
        replace_existing=True,
    )
    return scheduler


def run_scheduler(
    url: str, settings: Settings, prefill: Callable[[], jobs.Prefilled] | None = None
) -> None:
    """Block running the jobs until interrupted."""
    scheduler = build_scheduler(url, settings, prefill=prefill)
    for job in scheduler.get_jobs():
        log.info("scheduled %s (%s)", job.name, job.trigger)
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        scheduler.shutdown(wait=False)
