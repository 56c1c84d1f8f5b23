"""`stratum maintain --relayout`: rewrite the fine tiers of a lake written before issue 12
(one file per participant-day, partitioned by user_id/date) into month partitions, and bring
the lake's records in the warm store along (see lake/relayout.py for the copy itself).

The new table starts a new Delta log: every file whose days agree with their verified
records gets a fresh record (size and hash), and the tier's verified days point at the new
table's version, so that no day looks verified at a version the log does not reach. Run it
with the API and the scheduler stopped.
"""

from __future__ import annotations

import psycopg

from lake import Lake, partition_of
from lake.integrity import read_hashed
from lake.maintenance import CheckedFile
from lake.relayout import RelayoutResult, relayout
from sync.lakefiles import record_checked_files, record_damage
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
            with conn.transaction():
                conn.execute("DELETE FROM lake_files WHERE tier = %s", (table,))
                conn.execute(
                    "UPDATE lake_days SET lake_version = %s WHERE tier = %s",
                    (result.version, table),
                )
                # The copy equals the old files; compared with the verified records here,
                # a file's hash may vouch for its days (see sync/lakefiles.py).
                record_damage(
                    conn,
                    record_checked_files(conn, table, result.version, _read_back(fresh, table)),
                )
                conn.execute("SELECT nextval('catalog_seq')")  # what the router reads moved
            done.append(result)
    return done


def _read_back(lake: Lake, table: str) -> list[CheckedFile]:
    return [
        CheckedFile(
            relative,
            f.size_bytes,
            *read_hashed(lake.storage, table, f.path, partition_of(table, f.user_id, f.first_day)),
        )
        for relative, f in lake.entries(table)
    ]
