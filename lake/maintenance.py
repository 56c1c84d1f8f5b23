"""Compaction of crowded partitions, and the result records of maintenance jobs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from deltalake.transaction import AddAction, RemoveAction

from lake.layout import PartitionKey
from lake.prepare import sort_rows, split_partitions
from lake.read import read_partition_file
from lake.snapshot import Entry
from lake.writer import remove_action, write_file


@dataclass(frozen=True)
class CompactResult:
    tier: str
    version: int | None  # table version after the job (unchanged if nothing to do)
    partitions: int
    files_removed: int
    files_added: int
    bytes_before: int
    bytes_after: int
    seconds: float


@dataclass(frozen=True)
class VacuumResult:
    files_deleted: dict[str, int]  # per tier
    seconds: float

    @property
    def total_deleted(self) -> int:
        return sum(self.files_deleted.values())


def compact_partitions(
    tier: str,
    table_dir: Path,
    crowded: Mapping[PartitionKey, Sequence[Entry]],
    now_ms: int,
) -> tuple[list[AddAction | RemoveAction], int, int, int]:
    """Rewrite each partition's files as one sorted file; return the actions of one commit,
    files added, bytes before and bytes after. ``dataChange=false``: rows do not change."""
    actions: list[AddAction | RemoveAction] = []
    added = bytes_before = bytes_after = 0
    for key, entries in crowded.items():
        rows = pa.concat_tables(
            read_partition_file(tier, entry.file.path, key) for entry in entries
        )
        # split_partitions re-validates; one partition comes out.
        for part_key, part in split_partitions(tier, rows):
            add = write_file(table_dir, tier, part_key, sort_rows(part), data_change=False)
            actions.append(add)
            added += 1
            bytes_after += add.size
        for entry in entries:
            bytes_before += entry.file.size_bytes
            actions.append(remove_action(tier, entry, now_ms, data_change=False))
    return actions, added, bytes_before, bytes_after
