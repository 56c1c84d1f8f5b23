"""The parsed file list of one table version, indexed for pruning by user and day range."""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import unquote

import pyarrow as pa

from lake.deltalog import LogDelta
from lake.layout import PartitionKey, partition_columns, partition_days, partition_from_values


@dataclass(frozen=True)
class LakeFile:
    """One parquet file of a table version; ``first_day``..``last_day`` bound its rows' dates."""

    path: str
    user_id: int
    first_day: date
    last_day: date
    rows: int
    size_bytes: int


@dataclass(frozen=True)
class LakeFiles:
    """An exact file list of a pinned table version (``version`` None: no table yet)."""

    tier: str
    version: int | None
    files: tuple[LakeFile, ...]

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


@dataclass(frozen=True)
class Entry:
    """A file as the Delta log names it (needed to remove it in a later commit)."""

    relative_path: str
    partition: PartitionKey
    file: LakeFile


@dataclass(frozen=True)
class _UserIndex:
    # A user's partitions are disjoint day ranges, so `firsts` and `lasts` are both sorted and
    # a day-range query is two bisections.
    keys: tuple[PartitionKey, ...]
    firsts: tuple[date, ...]
    lasts: tuple[date, ...]
    groups: tuple[tuple[LakeFile, ...], ...]


def _file_order(lake_file: LakeFile) -> tuple[date, str]:
    return (lake_file.first_day, lake_file.path)


def _index_user(
    tier: str, keys: Iterable[PartitionKey], by_partition: Mapping[PartitionKey, list[Entry]]
) -> _UserIndex:
    ranked = sorted((*partition_days(tier, key), key) for key in keys)
    groups = []
    for _, _, key in ranked:
        group = [entry.file for entry in by_partition[key]]
        if len(group) > 1:
            group.sort(key=_file_order)
        groups.append(tuple(group))
    return _UserIndex(
        keys=tuple(k for _, _, k in ranked),
        firsts=tuple(first for first, _, _ in ranked),
        lasts=tuple(last for _, last, _ in ranked),
        groups=tuple(groups),
    )


class Snapshot:
    """Files of one (tier, version), by path, by partition and by user. Immutable."""

    def __init__(
        self,
        tier: str,
        version: int,
        by_path: dict[str, Entry],
        by_partition: dict[PartitionKey, list[Entry]],
        users: dict[int, _UserIndex],
    ) -> None:
        self.tier = tier
        self.version = version
        self.by_path = by_path
        self.by_partition = by_partition
        self._users = users
        self._user_order = sorted(users)
        self.files = tuple(
            itertools.chain.from_iterable(
                itertools.chain.from_iterable(users[u].groups) for u in self._user_order
            )
        )
        self.total_bytes = sum(f.size_bytes for f in self.files)
        self._first_day = min((f.first_day for f in self.files), default=date.max)
        self._last_day = max((f.last_day for f in self.files), default=date.min)

    @classmethod
    def build(cls, tier: str, version: int, entries: Iterable[Entry]) -> Snapshot:
        by_path: dict[str, Entry] = {}
        by_partition: dict[PartitionKey, list[Entry]] = {}
        for entry in entries:
            by_path[entry.relative_path] = entry
            by_partition.setdefault(entry.partition, []).append(entry)
        keys_of_user: dict[int, list[PartitionKey]] = {}
        for key in by_partition:
            keys_of_user.setdefault(key[0], []).append(key)
        users = {u: _index_user(tier, keys, by_partition) for u, keys in keys_of_user.items()}
        return cls(tier, version, by_path, by_partition, users)

    @classmethod
    def from_add_actions(
        cls, tier: str, version: int, table_dir: str, actions: pa.Table
    ) -> Snapshot:
        """Build from ``DeltaTable.get_add_actions(flatten=True)``."""
        parse = _EntryParser(tier, table_dir)
        user_col, label_col = partition_columns(tier)
        entries = [
            parse(relative, size, count, user, label, low, high)
            for relative, size, count, user, label, low, high in zip(
                actions.column("path").to_pylist(),
                actions.column("size_bytes").to_pylist(),
                _column(actions, "num_records"),
                _column(actions, f"partition.{user_col}"),
                _column(actions, f"partition.{label_col}"),
                _column(actions, "min.date"),
                _column(actions, "max.date"),
                strict=True,
            )
        ]
        return cls.build(tier, version, entries)

    def advance(self, table_dir: str, delta: LogDelta) -> Snapshot:
        """The snapshot after applying ``delta``; only the touched users are re-indexed."""
        parse = _EntryParser(self.tier, table_dir)
        by_path = dict(self.by_path)
        by_partition = dict(self.by_partition)  # lists are replaced, never mutated
        touched: set[PartitionKey] = set()
        for relative in delta.removed:
            entry = by_path.pop(relative, None)
            if entry is not None:
                remaining = [e for e in by_partition[entry.partition] if e is not entry]
                by_partition[entry.partition] = remaining
                touched.add(entry.partition)
        for relative, add in delta.added.items():
            entry = parse.add_action(relative, add)
            by_path[relative] = entry
            by_partition[entry.partition] = [*by_partition.get(entry.partition, ()), entry]
            touched.add(entry.partition)
        for key in touched:
            if not by_partition[key]:
                del by_partition[key]
        users = dict(self._users)
        for user_id in {key[0] for key in touched}:
            index = users.pop(user_id, None)
            keys = {k for k in touched if k[0] == user_id} | set(index.keys if index else ())
            alive = [k for k in keys if k in by_partition]
            if alive:
                users[user_id] = _index_user(self.tier, alive, by_partition)
        return Snapshot(self.tier, delta.version, by_path, by_partition, users)

    def select(
        self, user_ids: Sequence[int] | None, first_day: date, last_day: date
    ) -> tuple[LakeFile, ...]:
        """Files of those users (None: all) whose days overlap [first_day, last_day]."""
        if first_day > last_day:
            return ()
        if user_ids is None and first_day <= self._first_day and last_day >= self._last_day:
            return self.files
        selected: list[LakeFile] = []
        for user_id in self._user_order if user_ids is None else sorted(set(user_ids)):
            index = self._users.get(user_id)
            if index is None:
                continue
            low = bisect.bisect_left(index.lasts, first_day)
            high = bisect.bisect_right(index.firsts, last_day)
            for group in index.groups[low:high]:
                selected.extend(
                    f for f in group if f.first_day <= last_day and f.last_day >= first_day
                )
        return tuple(selected)


def _column(actions: pa.Table, name: str) -> list[Any]:
    if name in actions.column_names:
        return actions.column(name).to_pylist()
    return [None] * actions.num_rows


class _EntryParser:
    """Turns one add action (from delta-rs or from a JSON commit) into an Entry."""

    def __init__(self, tier: str, table_dir: str) -> None:
        self.tier = tier
        self.prefix = f"{table_dir}/"
        self.columns = partition_columns(tier)
        self.keys: dict[tuple[object, object], tuple[PartitionKey, date, date]] = {}

    def __call__(
        self,
        relative: str,
        size: int,
        rows: int | None,
        user: object,
        label: object,
        low: object,
        high: object,
    ) -> Entry:
        known = self.keys.get((user, label))
        if known is None:
            user_col, label_col = self.columns
            values = {
                user_col: None if user is None else str(user),
                label_col: None if label is None else str(label),
            }
            key = partition_from_values(self.tier, values)
            # Interned: every file of a month partition shares one key and one bound pair.
            known = self.keys[(user, label)] = (key, *partition_days(self.tier, key))
        key, first, last = known
        # Coarse tiers keep `date` inside their files: its stats bound a file tighter than
        # its month/year partition does.
        if isinstance(low, date) and isinstance(high, date):
            first, last = max(first, low), min(last, high)
        lake_file = LakeFile(
            path=self.prefix + (unquote(relative) if "%" in relative else relative),
            user_id=key[0],
            first_day=first,
            last_day=last,
            rows=-1 if rows is None else int(rows),
            size_bytes=int(size),
        )
        return Entry(relative, key, lake_file)

    def add_action(self, relative: str, add: Mapping[str, Any]) -> Entry:
        values = add.get("partitionValues") or {}
        stats = json.loads(add["stats"]) if add.get("stats") else {}
        low = stats.get("minValues", {}).get("date")
        high = stats.get("maxValues", {}).get("date")
        return self(
            relative,
            add["size"],
            stats.get("numRecords"),
            values.get(self.columns[0]),
            values.get(self.columns[1]),
            None if low is None else date.fromisoformat(low),
            None if high is None else date.fromisoformat(high),
        )
