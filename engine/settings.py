"""Settings, built once from STRATUM_* environment variables and passed explicitly.

Every variable read here is documented in the README; tests/engine/test_settings.py fails
if one is missing there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ConfigurationError

GiB = 1024**3
DEFAULT_MEMORY_BUDGET = 128 * GiB
# The budget never exceeds this share of physical RAM: the OS, PostgreSQL and the page
# cache need the rest.
MAX_RAM_SHARE = 0.8


@dataclass(frozen=True)
class DatabaseSettings:
    url: str | None  # None: start a private PostgreSQL under `home` (tests, quick start)
    home: Path  # where the private PostgreSQL keeps its data folder
    chunk_interval: str  # TimescaleDB hypertable chunk interval
    pool_size: int


@dataclass(frozen=True)
class LakeSettings:
    path: Path
    sync_grace_days: int  # days younger than this stay in the warm store: devices upload late
    sync_batch_days: int  # (user, day) pairs per Delta commit
    vacuum_retention_hours: int  # unreferenced files younger than this survive vacuum
    tier_older_than_days: int  # scheduler's tiering horizon for raw and 1m rows


@dataclass(frozen=True)
class MemorySettings:
    budget_bytes: int
    duckdb_threads: int
    spill_path: Path


@dataclass(frozen=True)
class QuerySettings:
    max_points: int  # default points per series for auto resolution
    default_page_size: int
    max_page_size: int
    max_users: int


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    log_level: str


@dataclass(frozen=True)
class SchedulerSettings:
    nightly_cron: str  # crontab fields, UTC
    misfire_grace_s: int


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings
    lake: LakeSettings
    memory: MemorySettings
    query: QuerySettings
    server: ServerSettings
    scheduler: SchedulerSettings


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str, name: str) -> int:
    """'512MiB', '8G', '1073741824' -> bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigurationError(
            f"{name}={text!r} is not a size; use bytes or a number with K, M, G or T "
            "(binary units), e.g. 8GiB",
            parameter=name,
        )
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "")[:1].upper()])


def physical_ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # not on every platform
        return DEFAULT_MEMORY_BUDGET


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not an integer", parameter=name) from None
    if value < minimum:
        raise ConfigurationError(f"{name}={value} must be >= {minimum}", parameter=name)
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    home = Path(env.get("STRATUM_HOME") or ".stratum").resolve()
    ram_cap = int(physical_ram_bytes() * MAX_RAM_SHARE)
    budget_raw = env.get("STRATUM_MEMORY_BUDGET")
    budget = (
        parse_size(budget_raw, "STRATUM_MEMORY_BUDGET") if budget_raw else DEFAULT_MEMORY_BUDGET
    )
    return Settings(
        database=DatabaseSettings(
            url=env.get("STRATUM_DATABASE_URL") or None,
            home=home,
            chunk_interval=env.get("STRATUM_CHUNK_INTERVAL") or "1 day",
            pool_size=_int(env, "STRATUM_DB_POOL_SIZE", 8, minimum=1),
        ),
        lake=LakeSettings(
            path=Path(env.get("STRATUM_LAKE_PATH") or home / "lake").resolve(),
            sync_grace_days=_int(env, "STRATUM_SYNC_GRACE_DAYS", 1),
            sync_batch_days=_int(env, "STRATUM_SYNC_BATCH_DAYS", 64, minimum=1),
            vacuum_retention_hours=_int(env, "STRATUM_VACUUM_RETENTION_HOURS", 168),
            tier_older_than_days=_int(env, "STRATUM_TIER_OLDER_THAN_DAYS", 30, minimum=1),
        ),
        memory=MemorySettings(
            budget_bytes=max(64 * 1024**2, min(budget, ram_cap)),
            duckdb_threads=_int(env, "STRATUM_DUCKDB_THREADS", os.cpu_count() or 1, minimum=1),
            spill_path=Path(env.get("STRATUM_SPILL_PATH") or home / "spill").resolve(),
        ),
        query=QuerySettings(
            max_points=_int(env, "STRATUM_MAX_POINTS", 5_000, minimum=1),
            default_page_size=_int(env, "STRATUM_DEFAULT_PAGE_SIZE", 10_000, minimum=1),
            max_page_size=_int(env, "STRATUM_MAX_PAGE_SIZE", 1_000_000, minimum=1),
            max_users=_int(env, "STRATUM_MAX_USERS", 1_000, minimum=1),
        ),
        server=ServerSettings(
            host=env.get("STRATUM_HOST") or "127.0.0.1",
            port=_int(env, "STRATUM_PORT", 8000, minimum=1),
            log_level=(env.get("STRATUM_LOG_LEVEL") or "info").lower(),
        ),
        scheduler=SchedulerSettings(
            nightly_cron=env.get("STRATUM_NIGHTLY_CRON") or "0 2 * * *",
            misfire_grace_s=_int(env, "STRATUM_MISFIRE_GRACE_S", 3600, minimum=1),
        ),
    )
