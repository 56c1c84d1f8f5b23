"""Compaction of crowded partitions, and the result records of maintenance jobs."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
from deltalake.transaction import AddAction, RemoveAction

from lake.checksum import DayKey, DayStat, day_checksums, merge_checksums
from lake.integrity import read_hashed
from lake.layout import PartitionKey
from lake.prepare import sort_rows, split_partitions
from lake.read import read_partition_file
from lake.snapshot import Entry, LakeFile
from lake.storage import LakeStorage
from lake.writer import remove_action, write_file

log = logging.getLogger(__name__)

_THREADS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class CheckedFile:
    """A file compaction wrote, read back: its content hash and (rows, checksum) per day, of
    the same bytes."""

    relative_path: str
    size: int
    sha256: str
    days: Mapping[DayKey, DayStat]


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
    added: tuple[CheckedFile, ...] = ()  # the files written, read back


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
) -> tuple[list[AddAction | RemoveAction], list[CheckedFile], int, int]:
    """Rewrite each partition's files as one sorted file; return the actions of one commit,
    the files written (read back), bytes before and bytes after. ``dataChange=false``: rows
    do not change. A partition with an unreadable file is left alone; the file goes to
    ``damaged``. A partition whose new file does not read back as the rows it replaces is
    left alone too (the new file stays an orphan for vacuum)."""

    def compact(
        key: PartitionKey, entries: Sequence[Entry]
    ) -> tuple[list[AddAction], list[CheckedFile]] | None:
        rows = _read_all(storage, tier, key, entries, damaged)  # list.append: thread-safe
        if rows is None:
            return None
        # split_partitions re-validates; one partition comes out.
        adds = [
            write_file(storage, table_dir, tier, part_key, sort_rows(part), data_change=False)
            for part_key, part in split_partitions(tier, rows)
        ]
        written = _read_back(storage, tier, table_dir, key, adds, day_checksums(tier, rows))
        return None if written is None else (adds, written)

    actions: list[AddAction | RemoveAction] = []
    checked: list[CheckedFile] = []
    bytes_before = bytes_after = 0
    # Partitions in parallel: a profile of one thread compacting 100 participant-months
    # spends most of its time in pyarrow's Parquet reads and writes, compute kernels and numpy
    # checksums, which release the GIL. A month of every participant settles on the same
    # night, so the night's maintain is that many partitions.
    with ThreadPoolExecutor(_THREADS) as pool:
        results = pool.map(compact, crowded.keys(), crowded.values())
        for entries, done in zip(crowded.values(), results, strict=True):
            if done is None:
                continue
            adds, written = done
            actions.extend(adds)
            checked.extend(written)
            bytes_after += sum(add.size for add in adds)
            for entry in entries:
                bytes_before += entry.file.size_bytes
                actions.append(remove_action(tier, entry, now_ms, data_change=False))
    return actions, checked, bytes_before, bytes_after


def _read_back(
    storage: LakeStorage,
    tier: str,
    table_dir: str,
    key: PartitionKey,
    adds: Sequence[AddAction],
    expected: Mapping[DayKey, DayStat],
) -> list[CheckedFile] | None:
    """The new files, hashed and read back; None (logged) unless they hold exactly the rows
    they replace. Their hashes later stand for this check (tiering trusts an unchanged hash,
    see sync/lakefiles.py), so the bytes hashed are the bytes checked."""
    checked = []
    try:
        for add in adds:
            digest, days = read_hashed(storage, tier, f"{table_dir}/{add.path}", key)
            checked.append(CheckedFile(add.path, add.size, digest, days))
    except (pa.ArrowException, OSError) as exc:
        log.error("compact %s %s: new file unreadable (%s); left as it was", tier, key, exc)
        return None
    found = merge_checksums(c.days for c in checked)
    if found != expected:
        log.error("compact %s %s: the new file reads back other rows; left as it was", tier, key)
        return None
    return checked
