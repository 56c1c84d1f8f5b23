"""Pruning catalog_changes (sync/migrations/008 and 009), the engine's per-participant
catalog invalidation log, which triggers append to with every lake day verified, damaged or
tiered: without pruning it grows with every night's sync.

Any row may go: the floor recorded in the same transaction makes every cached entry that
could have needed one reload (engine/catalog.py). Rows are kept for `older_than` only so
that the entries loaded since then are not reloaded for nothing.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg

KEPT = timedelta(days=1)  # the nightly job prunes what the previous night left

_PRUNE = """
WITH gone AS (
    DELETE FROM catalog_changes WHERE changed_at < now() - %s RETURNING xact_id
), deleted AS (
    SELECT count(*) AS n, max((xact_id::text)::bigint) AS newest FROM gone
)
UPDATE catalog_changes_floor SET below = greatest(below, deleted.newest + 1)
FROM deleted
RETURNING deleted.n
"""


def prune_catalog_changes(conn: psycopg.Connection, older_than: timedelta = KEPT) -> int:
    """Delete the catalog changes older than `older_than` and raise the floor above them, in
    one statement (one transaction); rows deleted."""
    row = conn.execute(_PRUNE, (older_than,)).fetchone()
    return int(row[0]) if row else 0
