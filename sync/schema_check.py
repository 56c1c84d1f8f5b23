"""Is a database a stratum warm store? Asked once, before a command or the server uses it.

Without this check a command run against an empty database (a new private server under an
unexpected STRATUM_HOME, a wrong STRATUM_DATABASE_URL) fails deep inside with `relation
"raw_data" does not exist`; with it, the caller says what to do.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from sync.schema import migration_files


def pending_migrations(url: str) -> list[str] | None:
    """None when the database holds no stratum schema at all; otherwise the names of the
    shipped migrations it lacks (empty: up to date)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
        if row is None or row[0] is None:
            return None
        applied = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    return [name for version, name, _ in migration_files() if version not in applied]


def database_label(url: str) -> str:
    """The database a URL names, for a message (never its password)."""
    info = conninfo_to_dict(url)
    port = f" port {info['port']}" if info.get("port") else ""
    return f"database {info.get('dbname')} on {info.get('host')}{port}"
