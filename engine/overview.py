"""Read-only summaries for /catalog and /health (`Engine.overview()`, `Engine.health()`).

Kept apart from the router catalog (engine.catalog), which is shaped for planning; this is
shaped for people: which participants exist, which days each store holds, the last sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg

_WARM_DAYS = (
    "SELECT user_id, min(day), max(day), count(*) FROM day_state GROUP BY user_id ORDER BY user_id"
)
# Lake days count while verified and unchanged since: what the router serves.
_LAKE_DAYS = (
    "SELECT user_id, tier, min(day), max(day), count(*) FROM current_lake_days "
    "GROUP BY user_id, tier ORDER BY user_id, tier"
)
_COLUMNS = (
    "SELECT column_name FROM information_schema.columns "
    "WHERE table_schema = current_schema() AND table_name = 'sync_runs'"
)
# The newest run of each job (sync, tier, maintain, refresh, nightly). A run still marked
# running whose connection is gone died with its process: 'interrupted' (as sync/runs.py
# reports it to `sync status`).
_LAST_RUNS = (
    "SELECT DISTINCT ON (job) job, jsonb_set(to_jsonb(r) - 'backend_pid', '{status}', "
    "to_jsonb(CASE WHEN r.status = 'running' AND NOT EXISTS ("
    " SELECT 1 FROM pg_stat_activity a"
    " WHERE a.pid = r.backend_pid AND a.backend_start <= r.started_at)"
    " THEN 'interrupted' ELSE r.status END)) FROM sync_runs r "
    "ORDER BY job, started_at DESC, id DESC"
)


# Damage recorded, and days verified at a version newer than the table's log reaches.
_DAMAGED = "SELECT tier, user_id, day, reason FROM lake_damage"
_AHEAD = (
    "SELECT tier, user_id, day, lake_version FROM current_lake_days "
    "WHERE tier = %s AND lake_version > %s"
)


@dataclass(frozen=True)
class Health:
    warm_store: bool  # answers a query now
    lake: bool  # every lake table's log is readable
    damaged: list[dict[str, Any]] = field(default_factory=list)  # lake days not served

    @property
    def ok(self) -> bool:
        return self.warm_store and self.lake and not self.damaged


@dataclass(frozen=True)
class Overview:
    lake_versions: dict[str, int | None]  # per lake table; None: no table yet, or unreadable
    coverage: list[dict[str, Any]] | None = None  # per user; None: warm store unreachable
    last_runs: dict[str, dict[str, Any]] | None = None  # per job; None: none recorded yet

    @property
    def warm_store(self) -> bool:
        return self.coverage is not None


def ping(conn: psycopg.Connection) -> None:
    """Raises if the warm store does not answer."""
    conn.execute("SELECT 1")


def damaged_days(
    conn: psycopg.Connection, versions: dict[str, int | None]
) -> dict[tuple[str, int, date], str]:
    """(lake table, user, day) -> why, for lake days that must not be served from the lake."""
    found: dict[tuple[str, int, date], str] = {}
    for table, version in versions.items():
        for tier, user_id, day, verified in conn.execute(
            _AHEAD, (table, -1 if version is None else version)
        ):
            found[(tier, user_id, day)] = (
                f"verified at lake version {verified}, but the table's log ends at {version}"
            )
    for tier, user_id, day, reason in conn.execute(_DAMAGED):
        found[(tier, user_id, day)] = reason
    return found


def _span(first: date, last: date, days: int) -> dict[str, Any]:
    return {"first_day": first.isoformat(), "last_day": last.isoformat(), "days": int(days)}


def coverage(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Per user: days in the warm store, verified lake days per tier, and the lake watermark
    (the latest lake day of any tier)."""
    users: dict[int, dict[str, Any]] = {}
    for user_id, first, last, days in conn.execute(_WARM_DAYS):
        users[user_id] = {"user_id": user_id, "warm": _span(first, last, days), "lake": {}}
    for user_id, tier, first, last, days in conn.execute(_LAKE_DAYS):
        entry = users.setdefault(user_id, {"user_id": user_id, "warm": None, "lake": {}})
        entry["lake"][tier] = _span(first, last, days)
    for entry in users.values():
        lasts = [span["last_day"] for span in entry["lake"].values()]
        entry["lake_watermark"] = max(lasts) if lasts else None
    return [users[u] for u in sorted(users)]


def last_runs(conn: psycopg.Connection) -> dict[str, dict[str, Any]] | None:
    """The newest sync_runs row per job, or None while the table does not exist."""
    columns = {row[0] for row in conn.execute(_COLUMNS)}
    if not {"id", "job", "started_at"} <= columns:
        return None
    return {job: dict(row) for job, row in conn.execute(_LAST_RUNS)}
