"""Compaction of crowded partitions, and the result records of maintenance jobs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
from deltalake.transaction import AddAction, RemoveAction

from lake.layout import PartitionKey
from lake.prepare import sort_rows, split_partitions
from lake.read import read_partition_file
from lake.snapshot import Entry, LakeFile
from lake.storage import LakeStorage
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
    # Files that could not be read (partition left as it was): (relative path, file, why).
    damaged: tuple[tuple[str, LakeFile, str], ...] = ()
    added: tuple[tuple[str, int], ...] = ()  # (relative path, size) of the files written


@dataclass(frozen=True)
class VacuumResult:
    files_deleted: dict[str, int]  # per tier
    seconds: float

    @property
    def total_deleted(self) -> int:
        return sum(self.files_deleted.values())


def _read_all(
    storage: LakeStorage,
    tier: str,
    key: PartitionKey,
    entries: Sequence[Entry],
    damaged: list[tuple[str, LakeFile, str]],
) -> pa.Table | None:
    """The partition's rows, or None (and its bad files in ``damaged``) if one is unreadable."""
    parts = []
    for entry in entries:
        try:
            parts.append(read_partition_file(storage, tier, entry.file.path, key))
        except (pa.ArrowException, OSError) as exc:
            damaged.append((entry.relative_path, entry.file, str(exc)))
    return pa.concat_tables(parts) if len(parts) == len(entries) else None


def compact_partitions(
    storage: LakeStorage,
    tier: str,
    table_dir: str,
    crowded: Mapping[PartitionKey, Sequence[Entry]],
    now_ms: int,
    damaged: list[tuple[str, LakeFile, str]],
) -> tuple[list[AddAction | RemoveAction], int, int, int]:
    """Rewrite each partition's files as one sorted file; return the actions of one commit,
    files added, bytes before and bytes after. ``dataChange=false``: rows do not change.
    A partition with an unreadable file is left alone; the file goes to ``damaged``."""
    actions: list[AddAction | RemoveAction] = []
    added = bytes_before = bytes_after = 0
    for key, entries in crowded.items():
        rows = _read_all(storage, tier, key, entries, damaged)
        if rows is None:
            continue
        # split_partitions re-validates; one partition comes out.
        for part_key, part in split_partitions(tier, rows):
            add = write_file(storage, table_dir, tier, part_key, sort_rows(part), data_change=False)
            actions.append(add)
            added += 1
            bytes_after += add.size
        for entry in entries:
            bytes_before += entry.file.size_bytes
            actions.append(remove_action(tier, entry, now_ms, data_change=False))
    return actions, added, bytes_before, bytes_after
