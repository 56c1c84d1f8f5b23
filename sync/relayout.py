"""`stratum maintain --relayout`: rewrite the fine tiers of a lake written before issue 12
(one file per participant-day, partitioned by user_id/date) into month partitions, and bring
the lake's records in the warm store along (see lake/relayout.py for the copy itself).

The new table starts a new Delta log: every file gets a fresh record (size and hash), and the
tier's verified days point at the new table's version, so that no day looks verified at a
version the log does not reach. Run it with the API and the scheduler stopped.
"""

from __future__ import annotations

import psycopg

from lake import Lake
from lake.integrity import file_digest
from lake.relayout import RelayoutResult, relayout
from sync.lakefiles import record_files
from sync.runs import SYNC_LOCK, advisory_lock

FINE_TABLES = ("raw", "agg_1m")


def relayout_lake(url: str, lake: Lake) -> list[RelayoutResult]:
    """Relayout each fine table that has the old layout; the results of those rewritten."""
    done: list[RelayoutResult] = []
    with (
        advisory_lock(url, SYNC_LOCK, "sync, tiering or backfill run"),
        psycopg.connect(url, autocommit=True) as conn,
    ):
        for table in FINE_TABLES:
            result = relayout(lake.storage, table)
            if result.version is None:
                continue
            fresh = Lake(lake.root)  # nothing cached of the table that was replaced
            files = [
                (table, relative, f.size_bytes, file_digest(fresh.storage, f.path), result.version)
                for relative, f in fresh.entries(table)
            ]
            with conn.transaction():
                conn.execute("DELETE FROM lake_files WHERE tier = %s", (table,))
                record_files(conn, files)
                conn.execute(
                    "UPDATE lake_days SET lake_version = %s WHERE tier = %s",
                    (result.version, table),
                )
                conn.execute("SELECT nextval('catalog_seq')")  # what the router reads moved
            done.append(result)
    return done
