"""Every TimescaleDB-specific statement stratum runs, in one place.

The warm store works on plain PostgreSQL (tests, quick start). When the `timescaledb`
extension is available (production, docker compose) raw_data and data_1m_stored become
hypertables and tiering drops whole chunks; chunks past a grace period move to the
columnstore (compressed, segmented by participant and metric). The SQL follows TimescaleDB
2.x documentation: create_hypertable with the by_range dimension builder (2.13+),
show_chunks, drop_chunks, the columnstore options and compress_chunk (2.18+).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

HYPERTABLES = ("raw_data", "data_1m_stored")  # data_1m is a view over data_1m_stored

# Every read and write names one participant and metric and a span of time: segments by
# (user_id, metric) ordered by ts let TimescaleDB skip whole batches on all three.
_COLUMNSTORE = (
    "timescaledb.enable_columnstore = true, timescaledb.segmentby = 'user_id, metric', "
    "timescaledb.orderby = 'ts'"
)


def extension_available(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    return row is not None


def preloaded(conn: psycopg.Connection) -> bool:
    """True when the server loads TimescaleDB at start (required by CREATE EXTENSION)."""
    row = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    return row is not None and "timescaledb" in row[0].replace(" ", "").split(",")


def declined(conn: psycopg.Connection) -> bool:
    """True when the server's configuration says `stratum.timescaledb = off`: it runs plain
    PostgreSQL on purpose although the extension is installed (the private test servers)."""
    row = conn.execute("SELECT current_setting('stratum.timescaledb', true)").fetchone()
    return row is not None and row[0] == "off"


def version(conn: psycopg.Connection) -> str | None:
    """The TimescaleDB version installed in this database, or None."""
    row = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
    ).fetchone()
    return None if row is None else str(row[0])


def table_bytes(conn: psycopg.Connection, table: str) -> int:
    """On-disk bytes of `table` with its indexes (and its chunks, for a hypertable)."""
    hypertable = enabled(conn) and table in hypertable_names(conn)
    size = "hypertable_size" if hypertable else "pg_total_relation_size"
    row = conn.execute(f"SELECT {size}(%s::regclass)", (table,)).fetchone()  # noqa: S608
    return int(row[0] or 0) if row else 0


def columnstore_bytes(conn: psycopg.Connection, table: str) -> int:
    """On-disk bytes of the compressed chunks of hypertable `table` (0 when none)."""
    row = conn.execute(
        "SELECT after_compression_total_bytes FROM hypertable_columnstore_stats(%s::regclass)",
        (table,),
    ).fetchone()
    return int(row[0] or 0) if row else 0


def enabled(conn: psycopg.Connection) -> bool:
    """True when the extension is installed in this database."""
    row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return row is not None


def enable(conn: psycopg.Connection, chunk_interval: str) -> None:
    """Create the extension and turn raw_data and data_1m_stored into hypertables that may move
    chunks to the columnstore (idempotent)."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    for table in HYPERTABLES:
        # Table names are our constants; the interval is a bound parameter. Every read and
        # write goes by the (user_id, metric, ts) primary key: the default (ts DESC) index
        # would only cost writes and bytes (9% of raw_data's, measured on per-minute data).
        conn.execute(
            f"SELECT create_hypertable('{table}', by_range('ts', %s::interval), "
            "create_default_indexes => FALSE, if_not_exists => TRUE, migrate_data => TRUE)",
            (chunk_interval,),
        )
        conn.execute(f"DROP INDEX IF EXISTS {table}_ts_idx")  # made by stratum before 2026-11
    configured = {
        row[0]
        for row in conn.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables "
            "WHERE compression_enabled"
        )
    }
    for table in HYPERTABLES:
        if table not in configured:  # the settings cannot change once chunks are compressed
            conn.execute(f"ALTER TABLE {table} SET ({_COLUMNSTORE})")


def longest_chunk(conn: psycopg.Connection) -> timedelta | None:
    """The longest chunk interval of the hypertables (None without them: plain PostgreSQL)."""
    if not enabled(conn):
        return None
    row = conn.execute(
        "SELECT max(time_interval) FROM timescaledb_information.dimensions "
        "WHERE hypertable_name = ANY(%s)",
        (list(HYPERTABLES),),
    ).fetchone()
    return row[0] if row else None


def hypertable_names(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT hypertable_name FROM timescaledb_information.hypertables ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def chunk_ranges(
    conn: psycopg.Connection, table: str, older_than: datetime
) -> list[tuple[str, datetime, datetime]]:
    """(chunk, range_start, range_end) of every chunk of `table` ending before older_than."""
    rows = conn.execute(
        "SELECT format('%%I.%%I', chunk_schema, chunk_name), range_start, range_end "
        "FROM timescaledb_information.chunks "
        "WHERE hypertable_name = %s AND range_end <= %s ORDER BY range_start",
        (table, older_than),
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def lock_for_drop(conn: psycopg.Connection) -> None:
    """Until the transaction ends, block writes to the hypertables (waiting for running ones):
    the (user, day) set of a chunk must not grow between checking it and dropping it.
    LOCK TABLE on a hypertable also locks its chunks (they are its inheritance children)."""
    conn.execute(f"LOCK TABLE {', '.join(HYPERTABLES)} IN SHARE MODE")


def drop_chunks_between(
    conn: psycopg.Connection, table: str, newer_than: datetime, older_than: datetime
) -> int:
    """Drop the chunks of `table` lying wholly inside [newer_than, older_than)."""
    rows = conn.execute(
        f"SELECT drop_chunks('{table}', older_than => %s, newer_than => %s)",
        (older_than, newer_than),
    ).fetchall()
    return len(rows)


def uncompressed_chunks(conn: psycopg.Connection, table: str, older_than: datetime) -> list[str]:
    """Chunks of `table` ending before older_than that are not (wholly) in the columnstore:
    never compressed, or compressed with rows written since (status PARTIAL)."""
    rows = conn.execute(
        "SELECT format('%%I.%%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks "
        "WHERE hypertable_name = %s AND range_end <= %s AND (NOT is_compressed OR 'PARTIAL' = "
        "ANY(_timescaledb_functions.chunk_status_text(format('%%I.%%I', chunk_schema, "
        "chunk_name)::regclass))) ORDER BY range_start",
        (table, older_than),
    ).fetchall()
    return [r[0] for r in rows]


def compress_chunk(conn: psycopg.Connection, chunk: str) -> None:
    """Move a chunk to the columnstore; a partial one is recompressed with its new rows."""
    conn.execute("SELECT compress_chunk(%s::regclass)", (chunk,))


# Run first in a transaction that writes into the hypertables: it lifts, for that transaction,
# the cap on rows a write may decompress (100,000 by default). Late rows, rollup refreshes and
# rehydration write into compressed chunks; each decompresses only the batches of the
# participant, metric and span it touches, which a large late delivery can take past the cap.
# On plain PostgreSQL it sets an unused placeholder.
ALLOW_COLUMNSTORE_WRITES = "SET LOCAL timescaledb.max_tuples_decompressed_per_dml_transaction = 0"
