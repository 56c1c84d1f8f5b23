"""plan(query, catalog) -> Plan. Pure: no I/O beyond the catalog it is handed.

Per user, each day of the span is served from exactly one place:
- the lake, when that (user, day) is synced, verified and unchanged since (catalog.lake_days
  less catalog.unsynced);
- otherwise the warm store: its rollup table, or, while the day's rollups lag its raw rows,
  a rollup computed from raw on the fly, so the answer is never stale.
A lake day the catalog marks unservable (damaged, or verified at a version the log does not
reach) comes from the warm store; if the warm store no longer holds it (raw and 1m of a
tiered day) the plan is refused with LakeDamaged naming the days: never a short answer.
Users whose days fall the same way share segments.

Tiers the warm store keeps forever (1h, 1d: tiering removes only raw and 1m) are served from
it whole when the answer is small: an index range scan there costs less than opening lake
files in DuckDB, and a single source needs no stitching (STRATUM_WARM_ROLLUP_ROWS; on the
`small` preset, side by side, warm rollups answered 164 to 3,560 hourly rows in 0.7-22 ms
against 3.3-37 ms from lake files). Large answers still come from the lake, where DuckDB
reads columns of many participants at once.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta

from engine.catalog import Catalog, Coverage
from engine.errors import LakeDamaged
from engine.plan import DayRange, Plan, Segment
from engine.query import DataQuery
from engine.tiers import RAW, TIERED, TIERS
from engine.timestamps import midnight

ONE_DAY = timedelta(days=1)


def _clip(ranges: tuple[DayRange, ...], first: date, last: date) -> list[DayRange]:
    out = []
    for lo, hi in ranges:
        lo, hi = max(lo, first), min(hi, last)
        if lo <= hi:
            out.append((lo, hi))
    return out


def _label_days(
    first: date, last: date, layers: list[tuple[str, list[DayRange]]], default: str
) -> list[tuple[str, date, date]]:
    """Cover [first, last] with labelled runs; earlier layers win where they overlap."""
    runs: list[tuple[str, date, date]] = [(default, first, last)]
    for label, ranges in reversed(layers):  # later layers first, so earlier ones overwrite
        for lo, hi in ranges:
            updated = []
            for run_label, a, b in runs:
                if b < lo or a > hi:
                    updated.append((run_label, a, b))
                    continue
                if a < lo:
                    updated.append((run_label, a, lo - ONE_DAY))
                updated.append((label, max(a, lo), min(b, hi)))
                if b > hi:
                    updated.append((run_label, hi + ONE_DAY, b))
            runs = updated
    runs.sort(key=lambda r: r[1])
    merged: list[tuple[str, date, date]] = []
    for label, a, b in runs:
        if merged and merged[-1][0] == label and merged[-1][2] + ONE_DAY == a:
            merged[-1] = (label, merged[-1][1], b)
        else:
            merged.append((label, a, b))
    return merged


def _intersect(a: list[DayRange], b: list[DayRange]) -> list[DayRange]:
    out = []
    for lo_a, hi_a in a:
        for lo_b, hi_b in b:
            lo, hi = max(lo_a, lo_b), min(hi_a, hi_b)
            if lo <= hi:
                out.append((lo, hi))
    return out


def _warm_whole(query: DataQuery, catalog: Catalog, warm_rollup_rows: int) -> bool:
    """A small answer of a tier the warm store keeps whole (see the module's docstring)."""
    tier = TIERS[query.resolution]
    if tier in TIERED or not catalog.warm_available:
        return False
    first, last = query.days
    days = (last - first).days + 1
    rows = len(query.users) * len(query.metrics) * days * (86_400 // tier.bucket_s)
    return rows <= warm_rollup_rows


def _user_runs(
    query: DataQuery, user_id: int, lake: Coverage, catalog: Catalog, warm_whole: bool
) -> list[tuple[str, datetime, datetime]]:
    first, last = query.days
    tier = TIERS[query.resolution]
    unservable = _clip(catalog.unservable.get(tier.lake_table, Coverage()).of(user_id), first, last)
    # Earlier layers win: a damaged lake day the warm store no longer holds is lost; a day
    # with stale rollups is rolled up from raw; a damaged lake day or one written since its
    # last sync comes from the warm store, whatever the lake holds.
    layers = []
    if tier in TIERED and unservable:
        tiered = _clip(catalog.tiered.of(user_id), first, last)
        layers.append(("lost", _intersect(unservable, tiered)))
    if query.resolution != "raw":
        layers.append(("warm_from_raw", _clip(catalog.stale_rollups.of(user_id), first, last)))
    layers.append(("warm", unservable))
    layers.append(("warm", _clip(catalog.unsynced.of(user_id), first, last)))
    if not warm_whole:
        layers.append(("lake", _clip(lake.of(user_id), first, last)))
    runs = []
    for label, a, b in _label_days(first, last, layers, "warm"):
        start = max(query.start, midnight(a))
        end = min(query.end, midnight(b + ONE_DAY))
        runs.append((label, start, end))
    return runs


def plan(query: DataQuery, catalog: Catalog, warm_rollup_rows: int = 0) -> Plan:
    """`warm_rollup_rows`: STRATUM_WARM_ROLLUP_ROWS (0: the lake wherever it holds the days)."""
    # Scope is checked here, once, whatever the entry point (HTTP, CLI, cursor, job).
    query.principal.require(query.users, query.metrics)
    warm_whole = _warm_whole(query, catalog, warm_rollup_rows)
    tier = TIERS[query.resolution]
    lake_coverage = catalog.lake_days.get(tier.lake_table, Coverage())
    version = catalog.lake_versions.get(tier.lake_table)
    if version is None:
        lake_coverage = Coverage()  # nothing verified can be read without a table
    # Group users by identical runs so one segment serves all of them.
    shared: dict[tuple[str, datetime, datetime], list[int]] = defaultdict(list)
    lost: list[tuple[int, date, date]] = []
    for user_id in query.users:
        for run in _user_runs(query, user_id, lake_coverage, catalog, warm_whole):
            if run[0] == "lost":
                lost.append((user_id, run[1].date(), (run[2] - timedelta(microseconds=1)).date()))
            shared[run].append(user_id)
    if lost:
        raise LakeDamaged(tier.lake_table, lost)
    segments = []
    for (label, start, end), users in sorted(shared.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if label == "lake":
            files = catalog.list_files(tier.lake_table, users, start, end, version)
            segments.append(
                Segment(
                    "lake",
                    query.resolution,
                    tier.lake_table,
                    tuple(users),
                    start,
                    end,
                    files=files,
                    lake_version=version,
                    estimated_rows=sum(f.rows for f in files),
                )
            )
        else:
            from_raw = label == "warm_from_raw"
            source = RAW.warm_table if from_raw else tier.warm_table
            segments.append(
                Segment(
                    "warm",
                    query.resolution,
                    source,
                    tuple(users),
                    start,
                    end,
                    rollup_from_raw=from_raw,
                )
            )
    notes = []
    if not catalog.warm_available:
        notes.append("warm store unreachable: coverage as of the last successful contact")
    return Plan(query, tuple(segments), tuple(notes))
