"""Replacing days inside month partitions (the fine tiers, raw and agg_1m).

A month partition holds files with disjoint day ranges: one per run of consecutive days a
sync or backfill wrote, or one compacted file for the whole month. Replacing some days:

- a file whose days are all replaced is removed;
- a file that also holds other days (a compacted month, typically) is read, and its other
  days' rows are written again, unchanged, in one file together with the new rows of that
  partition: the partition keeps disjoint day ranges, and late data into a settled month
  costs one rewrite of that month;
- otherwise the new rows go to one file per run of consecutive replaced days (a nightly
  sync writes one small file per participant-day: its cost follows the new days).

Everything lands in one Delta commit, like any replace_days.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lake.layout import PartitionKey, partition_of
from lake.read import read_partition_file
from lake.snapshot import Entry, Snapshot
from lake.storage import LakeStorage

_EPOCH = date(1970, 1, 1)


@dataclass
class PartitionPlan:
    """What replacing some days does to one month partition."""

    removed: list[Entry] = field(default_factory=list)  # every day of these is replaced
    rewritten: list[Entry] = field(default_factory=list)  # these also hold days kept


def days_by_partition(
    tier: str, pairs: set[tuple[int, date]]
) -> dict[PartitionKey, frozenset[date]]:
    """The replaced days of each partition."""
    grouped: dict[PartitionKey, set[date]] = {}
    for user_id, day in pairs:
        grouped.setdefault(partition_of(tier, user_id, day), set()).add(day)
    return {key: frozenset(days) for key, days in grouped.items()}


def plan_days(
    snapshot: Snapshot | None, replaced: Mapping[PartitionKey, frozenset[date]]
) -> dict[PartitionKey, PartitionPlan]:
    """Classify the files of each touched partition by how the replaced days cover them."""
    plans: dict[PartitionKey, PartitionPlan] = {}
    for key, days in replaced.items():
        current = plans[key] = PartitionPlan()
        entries = () if snapshot is None else snapshot.by_partition.get(key, ())
        for entry in entries:
            first, last = entry.file.first_day, entry.file.last_day
            span = {first + timedelta(days=n) for n in range((last - first).days + 1)}
            if span <= days:
                current.removed.append(entry)
            elif not span.isdisjoint(days):
                current.rewritten.append(entry)
    return plans


def outside(rows: pa.Table, days: frozenset[date]) -> pa.Table:
    """The rows whose `date` is not one of ``days`` (order kept)."""
    replaced = pa.array(sorted(days), pa.date32())
    return rows.filter(pc.invert(pc.is_in(rows.column("date"), value_set=replaced)))


def kept_rows(
    storage: LakeStorage,
    tier: str,
    key: PartitionKey,
    entries: Sequence[Entry],
    days: frozenset[date],
) -> list[pa.Table]:
    """The rows of partly replaced files that stay (every other day, bit for bit).

    Read with page checksums verified: a damaged file refuses the replacement, naming it,
    rather than dropping its other days."""
    kept = []
    for entry in entries:
        try:
            rows = read_partition_file(storage, tier, entry.file.path, key)
        except (pa.ArrowException, OSError) as exc:
            raise OSError(
                f"{tier}: {entry.relative_path} holds days kept by this replacement but "
                f"cannot be read ({exc}); restore it or replace all of its days"
            ) from exc
        kept.append(outside(rows, days))
    return kept


def day_runs(days: frozenset[date]) -> list[tuple[date, date]]:
    """Maximal runs of consecutive days, as (first, last), in order."""
    runs: list[tuple[date, date]] = []
    for day in sorted(days):
        if runs and runs[-1][1] + timedelta(days=1) == day:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def split_runs(part: pa.Table, days: frozenset[date]) -> list[pa.Table]:
    """New rows of one partition cut into one table per run of consecutive replaced days."""
    if part.num_rows == 0:
        return []
    runs = day_runs(days)
    if len(runs) == 1:
        return [part]
    # Day number of each run's first day; a row's run is the last one starting at or before it.
    starts = np.array([(first - _EPOCH).days for first, _ in runs], dtype=np.int64)
    row_days = part.column("date").cast(pa.int32()).to_numpy().astype(np.int64)
    run_of_row = np.searchsorted(starts, row_days, side="right") - 1
    order = np.argsort(run_of_row, kind="stable")
    grouped = part.take(pa.array(order))
    bounds = np.searchsorted(run_of_row[order], np.arange(len(runs) + 1))
    return [
        grouped.slice(int(lo), int(hi - lo))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        if hi > lo
    ]
