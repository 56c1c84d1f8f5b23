"""Versioned, idempotent warm-store migrations (`stratum db init`)."""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass
from importlib import resources

import psycopg

from engine.errors import ConfigurationError
from engine.registry import METRICS
from sync import timescale

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every process running migrations.
_MIGRATION_LOCK = 0x5354524154554D  # "STRATUM"


@dataclass(frozen=True)
class InitResult:
    applied: list[str]
    timescaledb: bool
    hypertables: list[str]


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped in sync/migrations, in order."""
    found = []
    for entry in resources.files("sync.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


def init_schema(url: str, chunk_interval: str = "1 day") -> InitResult:
    """Apply pending migrations, seed the metric registry, enable TimescaleDB when present."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            use_timescale = _wants_timescaledb(conn)
            applied = _migrate(conn)
            _seed_metrics(conn)
            hypertables: list[str] = []
            if use_timescale:
                timescale.enable(conn, chunk_interval)
                hypertables = timescale.hypertable_names(conn)
            return InitResult(applied, use_timescale, hypertables)
        finally:
            # A failure may have closed the session (which releases the lock): the unlock
            # must not replace the error that got us here.
            if not conn.closed:
                with suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))


def _wants_timescaledb(conn: psycopg.Connection) -> bool:
    """Use TimescaleDB when the server can run it; refuse a server that has it installed but
    not loaded, unless its configuration declines it on purpose (`stratum.timescaledb`)."""
    if timescale.enabled(conn):
        return True
    if not timescale.extension_available(conn) or timescale.declined(conn):
        return False
    if not timescale.preloaded(conn):
        raise ConfigurationError(
            "the warm store has the TimescaleDB extension installed but not loaded: add "
            "shared_preload_libraries = 'timescaledb' to its postgresql.conf and restart it "
            "(or set stratum.timescaledb = 'off' there to keep plain PostgreSQL tables)",
            parameter="shared_preload_libraries",
        )
    return True


def _migrate(conn: psycopg.Connection) -> list[str]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    applied = []
    for version, name, sql in migration_files():
        if version in done:
            continue
        with conn.transaction():
            conn.execute(sql.encode())  # our own shipped file, not user text
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (version, name),
            )
        applied.append(name)
        log.info("applied migration %s", name)
    return applied


def _seed_metrics(conn: psycopg.Connection) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO metrics (name, unit, native_interval_s, rollup, description) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
            "unit = EXCLUDED.unit, native_interval_s = EXCLUDED.native_interval_s, "
            "rollup = EXCLUDED.rollup, description = EXCLUDED.description",
            [
                (m.name, m.unit, m.native_interval_s, m.rollup, m.description)
                for m in METRICS.values()
            ],
        )
